"""Compression passes: each a config class (kit.compress.<method>) applied by one verb, registered
in kit.compress.registry; kit.compress.chain composes them. Importing this package loads no torch."""

from kit.compress.cluster import Cluster, cluster
from kit.compress.distill import Distill, TrainConfig, distill, train
from kit.compress.gate import GateResult, check as check_budget
from kit.compress.lowrank import LowRank, lowrank
from kit.compress.ort_quant import OrtInt8Dynamic, OrtInt8Static, quantize_onnx, quantize_onnx_dynamic
from kit.compress.prune import Prune, prune
from kit.compress.qat import QAT, qat
from kit.compress.quantize import Int8Dynamic, Int8Static, QuantizedModel, quantize
from kit.compress.structured import PruneStructured, prune_structured

__all__ = [
    "Distill", "TrainConfig", "distill", "train",
    "Int8Static", "Int8Dynamic", "QuantizedModel", "quantize", "QAT", "qat",
    "OrtInt8Static", "OrtInt8Dynamic", "quantize_onnx", "quantize_onnx_dynamic",
    "Prune", "prune", "PruneStructured", "prune_structured", "LowRank", "lowrank", "Cluster", "cluster",
    "GateResult", "check_budget",
]
