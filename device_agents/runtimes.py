"""Load a model file with whichever runtime the bundle names; numpy in, numpy out."""

from __future__ import annotations

import importlib.util

from device_agents.errors import AgentError


def available() -> dict:
    out = {}
    for name, mod in (("executorch", "executorch"), ("onnxruntime", "onnxruntime")):
        if importlib.util.find_spec(mod) is None:
            out[name] = None
            continue
        try:
            from importlib.metadata import version

            out[name] = version(mod)
        except Exception:
            out[name] = "unknown"
    return out


class OrtModel:
    def __init__(self, path: str, threads: int):
        try:
            import onnxruntime as ort
        except ImportError:
            raise AgentError("runtime_missing", "onnxruntime is not installed on this device; pip install onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise AgentError("load_failed", f"onnxruntime cannot load the model: {str(e).splitlines()[0][:200]}")
        self.input_name = self.sess.get_inputs()[0].name
        self.input_shape = self.sess.get_inputs()[0].shape

    def __call__(self, x):
        return self.sess.run(None, {self.input_name: x})[0]


class PteModel:
    def __init__(self, path: str, threads: int):
        try:
            import torch  # ExecuTorch's pybindings take and return torch tensors
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime, Verification
        except ImportError:
            raise AgentError("runtime_missing", "executorch is not installed on this device; pip install executorch")
        self._torch = torch
        if threads > 0:
            # XNNPACK draws from ExecuTorch's shared threadpool; size it before loading.
            portable_lib._unsafe_reset_threadpool(threads)
        try:
            program = Runtime.get().load_program(path, verification=Verification.InternalConsistency)
            self.method = program.load_method("forward")
        except Exception as e:
            raise AgentError("load_failed", f"executorch cannot load the model: {str(e).splitlines()[0][:200]}")
        meta = self.method.metadata
        self.input_shape = list(meta.input_tensor_meta(0).sizes()) if meta.num_inputs() else None

    def __call__(self, x):
        out = self.method.execute([self._torch.from_numpy(x)])
        return out[0].numpy()


def load(path: str, runtime: str, threads: int):
    if runtime == "onnxruntime":
        return OrtModel(path, threads)
    if runtime == "executorch":
        return PteModel(path, threads)
    raise AgentError("unknown_runtime", f"runtime {runtime!r} is not one this agent runs (executorch, onnxruntime)")
