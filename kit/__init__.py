"""EdgeKit: compress PyTorch models per device, package them for ExecuTorch and ONNX Runtime,
push them to devices and measure them there.

The public API: one verb per stage, plain dataclasses between stages.
"""

from kit.compress import (
    QAT, Cluster, Distill, Int8Dynamic, Int8Static, LowRank, OrtInt8Dynamic, OrtInt8Static, Prune, PruneStructured,
    QuantizedModel, TrainConfig, cluster, distill, lowrank, prune, prune_structured, qat, quantize, quantize_onnx,
    quantize_onnx_dynamic, train,
)
from kit.compress.chain import METHODS, ChainResult, run_chain
from kit.compress.job import compress_job
from kit.data import Dataset, Splits, load_data, load_digits
from kit.pipeline.demo import DemoConfig, DemoResult, run_demo
from kit.errors import EdgeKitError
from kit.evaluate import accuracy, agreement, count_macs, count_params, torch_predictor
from kit.devices import BenchOptions, DeviceEntry, Inventory, LocalDevice, Measurement, SshDevice, bench, connect, import_ansible
from kit.fleet import RolloutOptions, RolloutResult, fleet_status, rollback_group, rollout
from kit.models import TeacherCNN, load_model, mobilenet_student
from kit.package import Bundle, BundleRefused, Verified, package, runner_for, verify
from kit.package.signing import init_keys, public_key_paths
from kit.recipes import Recipe, list_recipes, load_recipe
from kit.recipes.apply import apply_recipe
from kit.results import ResultsStore, check_against_baseline, compare, export, twin_speedups, write_report, write_store_report
from kit.search import search, student_search

__version__ = "0.1.0"

__all__ = [
    # data and models
    "Dataset", "Splits", "load_data", "load_digits", "TeacherCNN", "load_model", "mobilenet_student",
    # compression
    "TrainConfig", "train", "Distill", "distill", "Int8Static", "Int8Dynamic", "QuantizedModel", "quantize", "QAT",
    "qat", "OrtInt8Static", "OrtInt8Dynamic", "quantize_onnx", "quantize_onnx_dynamic", "Prune", "prune",
    "PruneStructured", "prune_structured", "LowRank", "lowrank", "Cluster", "cluster", "METHODS", "ChainResult",
    "run_chain", "compress_job",
    # evaluation
    "accuracy", "agreement", "count_macs", "count_params", "torch_predictor",
    # recipes and search
    "Recipe", "load_recipe", "list_recipes", "apply_recipe", "search", "student_search",
    # packaging
    "Bundle", "BundleRefused", "Verified", "package", "runner_for", "verify", "init_keys", "public_key_paths",
    # devices and fleet
    "BenchOptions", "Measurement", "bench", "LocalDevice", "DeviceEntry", "Inventory", "connect", "SshDevice",
    "RolloutOptions", "RolloutResult", "rollout", "fleet_status", "rollback_group", "import_ansible",
    # results
    "ResultsStore", "compare", "check_against_baseline", "export", "twin_speedups", "write_report", "write_store_report",
    # the whole job
    "DemoConfig", "DemoResult", "run_demo", "EdgeKitError",
]
