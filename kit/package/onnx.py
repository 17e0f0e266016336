"""ONNX: torch.onnx.export (dynamo exporter via onnxscript) and ORT sessions on the host."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from kit.errors import EdgeKitError


def export_onnx(module: torch.nn.Module, example_input: tuple[torch.Tensor, ...], out_path: str | Path,
                opset: int = 18, input_names: list[str] | None = None, output_names: list[str] | None = None) -> Path:
    """Export to a single self-contained .onnx file (no external data), written atomically.
    Graph names: "input"/"output" for one of each; several inputs are named after forward()'s
    arguments and several outputs by their pytree paths (kit.io), unless given."""
    import onnx

    from kit.io import input_names as forward_names
    from kit.io import output_names as leaf_names

    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.stem + ".part.onnx")
    try:
        if input_names is None:
            input_names = forward_names(module, len(example_input))
        if output_names is None:
            output_names = leaf_names(module, tuple(example_input))
            output_names = ["output"] if len(output_names) == 1 else output_names
        # The dynamo exporter prints progress lines of its own; keep the user's terminal clean.
        with contextlib.redirect_stdout(io.StringIO()):
            prog = torch.onnx.export(module.eval(), example_input, dynamo=True, opset_version=opset,
                                     input_names=input_names, output_names=output_names, verbose=False)
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
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def __call__(self, x):
        """One input array -> the output array; several inputs (a tuple, fed by graph input name in
        order) or several outputs (a list with names): kit.io."""
        from kit.io import Outputs, as_tuple, is_multi

        if not is_multi(x) and len(self.output_names) == 1:
            return self._sess.run(None, {self._name: x})[0]
        if len(as_tuple(x)) != len(self.input_names):
            raise EdgeKitError(f"the .onnx takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}); "
                               f"got {len(as_tuple(x))}")
        outs = self._sess.run(None, dict(zip(self.input_names, as_tuple(x))))
        return outs[0] if len(outs) == 1 else Outputs(outs, self.output_names)


def self_contained_onnx(src: str | Path, dst: str | Path) -> Path:
    """Copy an .onnx to `dst` with any external tensor data folded in, refusing data outside its folder.

    A bundle holds one model file; external data that points elsewhere (``../secret``, ``/etc/...``)
    is how a model file reads files it should not, so it is refused here and again on the device.
    """
    import shutil

    import onnx

    from device_agents.onnx_refs import onnx_external_locations
    from device_agents.errors import AgentError

    src, dst = Path(src), Path(dst)
    try:
        locations = onnx_external_locations(str(src))
    except AgentError as e:
        raise EdgeKitError(f"{src}: {e.message}") from None
    if not locations:
        shutil.copyfile(src, dst)
        return dst
    root = src.parent.resolve()
    for loc in locations:
        target = (root / loc).resolve()
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(root):
            raise EdgeKitError(f"{src}: external tensor data {loc!r} lies outside the model's folder; "
                               f"refusing it (keep the data beside the model)")
        if not target.is_file():
            raise EdgeKitError(f"{src}: external tensor data file {loc!r} is missing")
    model = onnx.load(str(src), load_external_data=True)
    tmp = dst.with_name(dst.stem + ".part.onnx")
    try:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    except ValueError as e:  # protobuf's 2 GiB limit
        raise EdgeKitError(f"{src}: too large to fold its external data into one file ({e})") from e
    tmp.replace(dst)
    return dst
