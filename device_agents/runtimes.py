"""Load a model with whichever runtime the bundle names; numpy in, numpy out.

Models are loaded from bytes the caller has already hashed, so the file cannot change between
the check and the parse. `prepare(x)` returns a no-argument callable with the inputs already
converted, so the timed loop measures the runtime call and nothing of ours. A model with several
inputs or outputs is called through `prepare_all(inputs)` instead: a list of arrays in (forward()'s
order; ORT feeds them by graph input name in that order), a list of every output out.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

from device_agents.errors import AgentError

RUNTIME_MODULES = {"executorch": "executorch", "onnxruntime": "onnxruntime"}


def available() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, mod in RUNTIME_MODULES.items():
        if importlib.util.find_spec(mod) is None:
            out[name] = None
            continue
        try:
            out[name] = version(mod)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def import_runtime(runtime: str) -> None:
    """Import the runtime before the sandbox limits are set: the import is trusted code, and
    torch alone maps ~3.5 GB of address space, which must not count against the model."""
    try:
        if runtime == "onnxruntime":
            importlib.import_module("onnxruntime")
        elif runtime == "executorch":
            importlib.import_module("torch")
            importlib.import_module("executorch.runtime")
            importlib.import_module("executorch.extension.pybindings.portable_lib")
        else:
            raise AgentError("unknown_runtime", f"runtime {runtime!r} is not one this agent runs (executorch, onnxruntime)")
    except ImportError:
        raise AgentError("runtime_missing", f"{runtime} is not installed on this device; pip install {RUNTIME_MODULES[runtime]}")


class OrtModel:
    planned_mb = None  # ORT's arena grows on demand: no planned figure before the first run

    def __init__(self, data: bytes, threads: int, profile_to: str | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if profile_to:  # a session of its own (the timed one never profiles): trace JSON beside profile_to
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(os.path.dirname(profile_to), "ort")
        opts.intra_op_num_threads = threads  # explicit, so ORT does not also pin its own affinities
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise load_error("onnxruntime", e)
        inp = self.sess.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.input_dtype = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
                            "tensor(int8)": "int8", "tensor(int64)": "int64"}.get(inp.type, "float32")
        self.threads = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}

    def prepare(self, x):
        run, feed, name = self.sess.run, {self.input_name: x}, None
        return lambda: run(name, feed)[0]

    def prepare_all(self, xs: list):
        names = [i.name for i in self.sess.get_inputs()]
        if len(xs) != len(names):
            raise AgentError("bad_input", f"the model takes {len(names)} input(s) ({', '.join(names)}); the bundle gives {len(xs)}")
        run, feed = self.sess.run, dict(zip(names, xs))
        return lambda: run(None, feed)

    def finish_profile(self, path: str) -> None:
        os.replace(self.sess.end_profiling(), path)


class PteModel:
    planned_mb = None  # the Python bindings' MethodMeta has no memory-planned buffer sizes (the native runner reports them)

    def __init__(self, data: bytes, threads: int):
        import torch  # ExecuTorch's pybindings take and return torch tensors
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime, Verification

        torch.set_num_threads(threads)  # torch's own pool (unused by XNNPACK, but created on import)
        # XNNPACK draws from ExecuTorch's shared threadpool; size it before loading.
        portable_lib._unsafe_reset_threadpool(threads)
        self._torch = torch
        try:
            # Keep the Program: it owns the model bytes the loaded method points into.
            self.program = Runtime.get().load_program(data, verification=Verification.InternalConsistency)
            self.method = self.program.load_method("forward")
        except Exception as e:
            raise load_error("executorch", e)
        meta = self.method.metadata
        tm = meta.input_tensor_meta(0) if meta.num_inputs() else None
        self.input_shape = list(tm.sizes()) if tm is not None else None
        self.input_dtype = "float32"
        self.threads = {"threadpool": portable_lib._threadpool_get_thread_count(), "torch": torch.get_num_threads()}

    def prepare(self, x):
        execute, inputs = self.method.execute, [self._torch.from_numpy(x)]
        return lambda: execute(inputs)[0].numpy()

    def prepare_all(self, xs: list):
        execute, inputs = self.method.execute, [self._torch.from_numpy(x) for x in xs]
        return lambda: [o.numpy() for o in execute(inputs)]


class PteProfiledModel:
    """ExecuTorch's Python bindings with ETDump on (portable_lib; executorch.runtime has no ETDump switch)."""
    planned_mb = None

    def __init__(self, data: bytes, threads: int):
        import torch
        from executorch.extension.pybindings import portable_lib

        torch.set_num_threads(threads)
        portable_lib._unsafe_reset_threadpool(threads)
        self._torch = torch
        self._data = data  # the loaded module points into these bytes: keep them alive
        try:
            self.module = portable_lib._load_for_executorch_from_buffer(data, enable_etdump=True, debug_buffer_size=0)
        except Exception as e:
            raise load_error("executorch", e)
        tm = self.module.method_meta("forward").input_tensor_meta(0)
        self.input_shape, self.input_dtype = list(tm.sizes()), "float32"
        self.threads = {"threadpool": portable_lib._threadpool_get_thread_count(), "torch": torch.get_num_threads()}

    def prepare(self, x):
        forward, inputs = self.module.forward, [self._torch.from_numpy(x)]
        return lambda: forward(inputs)[0].numpy()

    def prepare_all(self, xs: list):
        forward, inputs = self.module.forward, [self._torch.from_numpy(x) for x in xs]
        return lambda: [o.numpy() for o in forward(inputs)]

    def finish_profile(self, path: str) -> None:
        self.module.write_etdump_result_to_file(path, path + ".debug")


MEMORY_ERRORS = ("bad_alloc", "failed to allocate", "out of memory", "cannot allocate memory", "memoryerror",
                 "std::length_error")


def is_memory_error(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or any(s in str(e).lower() for s in MEMORY_ERRORS)


def load_error(runtime: str, e: Exception) -> AgentError:
    if is_memory_error(e):
        return AgentError("resource_limit", f"{runtime} ran out of memory loading the model under the agent's "
                                            f"limit (max_memory_mb): {_first_line(e)}")
    return AgentError("load_failed", f"{runtime} cannot load the model: {_first_line(e)}")


def load(data: bytes, runtime: str, threads: int, profile_to: str | None = None):
    if runtime == "onnxruntime":
        return OrtModel(data, threads, profile_to)
    if runtime == "executorch":
        return PteProfiledModel(data, threads) if profile_to else PteModel(data, threads)
    raise AgentError("unknown_runtime", f"runtime {runtime!r} is not one this agent runs (executorch, onnxruntime)")
