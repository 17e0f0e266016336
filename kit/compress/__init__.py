"""Compression stages: each a config object applied by one verb."""

from kit.compress.distill import Distill, TrainConfig, distill, train
from kit.compress.ort_quant import OrtInt8Static, quantize_onnx
from kit.compress.quantize import Int8Dynamic, Int8Static, QuantizedModel, quantize

__all__ = [
    "Distill", "TrainConfig", "distill", "train",
    "Int8Static", "Int8Dynamic", "QuantizedModel", "quantize",
    "OrtInt8Static", "quantize_onnx",
]
