"""ONNX: torch.onnx.export (dynamo exporter via onnxscript) and ORT sessions on the host."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from kit.errors import EdgeKitError


def export_onnx(module: torch.nn.Module, example_input: tuple[torch.Tensor, ...], out_path: str | Path,
                opset: int = 18) -> Path:
    """Export to a single self-contained .onnx file (no external data), written atomically."""
    import onnx

    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.stem + ".part.onnx")
    try:
        # The dynamo exporter prints progress lines of its own; keep the user's terminal clean.
        with contextlib.redirect_stdout(io.StringIO()):
            prog = torch.onnx.export(module.eval(), example_input, dynamo=True, opset_version=opset,
                                     input_names=["input"], output_names=["output"], verbose=False)
            prog.optimize()
    except Exception as e:
        raise EdgeKitError(f"torch.onnx.export failed for {type(module).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e
    model = prog.model_proto
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    tmp.replace(out_path)
    return out_path


class OrtRunner:
    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._name = self._sess.get_inputs()[0].name

    def __call__(self, x):
        return self._sess.run(None, {self._name: x})[0]
