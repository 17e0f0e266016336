"""EdgeKit: compress PyTorch models per device, package them for ExecuTorch and ONNX Runtime,
push them to devices and measure them there.

The public API: one verb per stage, plain dataclasses between stages. Names load on first use
(PEP 562 module __getattr__), so `import kit` and the light CLI commands pull in no torch,
executorch, onnxruntime or paramiko; `kit.quantize`, `from kit import quantize` work as ever.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# Where each public name lives, grouped by concern; __all__ follows this order.
_HOMES: dict[str, tuple[str, ...]] = {
    # data and models
    "kit.data": ("Dataset", "Splits", "load_data", "load_digits"),
    "kit.models": ("TeacherCNN", "load_model", "mobilenet_student"),
    "kit.onnx_model": ("OnnxModel", "load_onnx_model"),
    # compression
    "kit.compress": ("TrainConfig", "train", "Distill", "distill", "Int8Static", "Int8Dynamic", "QuantizedModel",
                     "quantize", "QAT", "qat", "OrtInt8Static", "OrtInt8Dynamic", "quantize_onnx",
                     "quantize_onnx_dynamic", "Prune", "prune", "PruneStructured", "prune_structured", "LowRank",
                     "lowrank", "Cluster", "cluster"),
    "kit.compress.chain": ("METHODS", "ChainResult", "run_chain"),
    # evaluation
    "kit.evaluate": ("accuracy", "agreement", "count_macs", "count_params", "torch_predictor"),
    # recipes and search
    "kit.recipes": ("Recipe", "load_recipe", "list_recipes"),
    "kit.search": ("search", "student_search"),
    # packaging
    "kit.package": ("Bundle", "BundleRefused", "Verified", "package", "runner_for", "verify"),
    "kit.package.signing": ("init_keys", "public_key_paths"),
    # devices and fleet
    "kit.devices": ("BenchOptions", "Measurement", "bench", "LocalDevice", "DeviceEntry", "Inventory", "connect",
                    "SshDevice", "import_ansible"),
    "kit.fleet": ("RolloutOptions", "RolloutResult", "rollout", "fleet_status", "rollback_group"),
    "kit.fleet.group": ("Group", "GroupResult"),
    "kit.native": ("build_runner",),
    # results
    "kit.results": ("ResultsStore", "compare", "check_against_baseline", "export", "twin_speedups", "write_report",
                    "write_store_report"),
    # the whole job: build (compress -> package -> evaluate -> gate), measure, the demo
    "kit.pipeline.build": ("build", "Build", "compress_job", "apply_recipe"),
    "kit.pipeline.build_onnx": ("build_onnx",),
    "kit.pipeline.measure": ("measure", "MeasureOutcome"),
    "kit.pipeline.demo": ("DemoConfig", "DemoResult", "run_demo"),
    # errors, by type
    "kit.errors": ("EdgeKitError", "DeviceError", "LinkLost", "DeviceUnreachable", "HostKeyRejected", "AgentRefused",
                   "AgentProtocolError"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = list(_HOME_OF)


def __getattr__(name: str):
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Api(types.ModuleType):
    """kit's module type. Loading a subpackage makes the import system set `kit.<sub>` to it; where
    a public verb has the subpackage's name (kit.package, kit.search) the verb must stay what
    `kit.package` means, as it did when this file imported the verbs eagerly."""

    def __setattr__(self, name: str, value) -> None:
        if name in _HOME_OF and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Api
