"""Quantization-aware training for XNNPACK: prepare_qat_pt2e, a short fine-tune with fake-quant in
the loop, then convert_pt2e. The result is the same `QuantizedModel` PTQ returns."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kit.compress.base import Pass, StepContext, StepResult
from kit.compress.distill import TrainConfig, train_loop
from kit.compress.quantize import (
    QuantizedModel,
    check_layer_names,
    convert,
    count_quantize_ops,
    prepare,
    xnnpack_config,
    xnnpack_quantizer,
)
from kit.errors import EdgeKitError
from kit.progress import ProgressFn

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kit.data import Dataset


@dataclass
class QAT(Pass):
    runtimes = ("executorch",)
    terminal = True

    per_channel: bool = True
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 32
    seed: int = 0
    max_samples: int | None = None  # fine-tune on the first N training samples only
    skip_layers: list[str] = field(default_factory=list)
    method: Literal["qat"] = "qat"

    def __post_init__(self):
        if self.epochs < 1:
            raise EdgeKitError(f"qat epochs={self.epochs}: QAT needs at least one epoch of fine-tuning")

    def apply(self, model, ctx: StepContext) -> StepResult:
        quantized = qat(model, self, ctx.splits.train, ctx.progress)
        return StepResult(quantized, {"quantized_ops": quantized.quantized_ops})


def _export_trainable(model: nn.Module, sample: torch.Tensor):
    # QAT trains on batches, so the batch dimension must stay dynamic in the exported graph.
    import torch

    batch = torch.export.Dim("batch", min=2, max=4096)
    try:
        return torch.export.export(model.eval(), (sample,), dynamic_shapes=({0: batch},), strict=False).module()
    except Exception as e:
        raise EdgeKitError(
            f"torch.export cannot trace {type(model).__name__} with a dynamic batch for QAT "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); use post-training quantization (method: quantize)"
        ) from e


def qat(model: nn.Module, config: QAT, data: Dataset, progress: ProgressFn = None) -> QuantizedModel:
    """Fine-tune `model` with fake quantization on `data` (labelled), then convert to int8."""
    import torch
    import torch.nn.functional as F
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    if data is None or len(data) < 2:
        raise EdgeKitError("qat needs a labelled training set with at least 2 samples (--data)")
    name = type(model).__name__
    check_layer_names(model, config.skip_layers, "qat skip_layers")
    from kit.compress.checks import check_finite

    check_finite(data, "training data (qat)", config.max_samples)
    model = copy.deepcopy(model)
    sample = torch.from_numpy(data.x[:2].copy())
    graph = _export_trainable(model, sample)
    quantizer = xnnpack_quantizer(xnnpack_config(config.per_channel, qat=True), config.skip_layers)
    prepared = prepare(graph, quantizer, name, qat=True)

    cfg = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                      max_samples=config.max_samples)
    train_loop(prepared, data, cfg, lambda m, x, y: F.cross_entropy(m(x), y), "qat", progress,
               set_train=move_exported_model_to_train, set_eval=move_exported_model_to_eval)
    converted = convert(prepared, name, "qat")
    example = (torch.zeros((1, *data.x.shape[1:]), dtype=torch.float32),)
    # float_graph is the model before fine-tuning, so per-layer SQNR against it would mix training
    # changes into the quantization error: left out for QAT.
    return QuantizedModel(module=converted, example_input=example, config=config, float_graph=None,
                          quantized_ops=count_quantize_ops(converted), batch_dynamic=True)
