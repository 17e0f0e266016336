"""EdgeKit: compress PyTorch models per device, package them for ExecuTorch and ONNX Runtime,
push them to devices and measure them there.

The public API: one verb per stage, plain dataclasses between stages.
"""

from kit.compress import (
    Distill, Int8Dynamic, Int8Static, OrtInt8Static, QuantizedModel, TrainConfig, distill, quantize, quantize_onnx, train,
)
from kit.data import Dataset, Splits, load_data, load_digits
from kit.demo import DemoConfig, DemoResult, run_demo
from kit.errors import EdgeKitError
from kit.evaluate import accuracy, agreement, count_macs, count_params, torch_predictor
from kit.fleet import BenchOptions, LocalDevice, Measurement, bench
from kit.models import TeacherCNN, load_model, mobilenet_student
from kit.package import Bundle, package, runner_for
from kit.results import ResultsStore
from kit.results.report import write_report

__version__ = "0.1.0"

__all__ = [
    "Distill", "Int8Dynamic", "Int8Static", "OrtInt8Static", "QuantizedModel", "TrainConfig", "distill", "quantize",
    "quantize_onnx", "train", "Dataset", "Splits", "load_data", "load_digits", "DemoConfig", "DemoResult", "run_demo",
    "EdgeKitError", "accuracy", "agreement", "count_macs", "count_params", "torch_predictor", "BenchOptions",
    "LocalDevice", "Measurement", "bench", "TeacherCNN", "load_model", "mobilenet_student", "Bundle", "package",
    "runner_for", "ResultsStore", "write_report",
]
