"""Int8 quantization for ExecuTorch/XNNPACK via PT2E (torchao's prepare_pt2e/convert_pt2e).

`quantize(model, Int8Static(per_channel=True), calib)` returns a `QuantizedModel`: the converted
graph module (still a torch module, runnable on the host for accuracy checks) plus the example
input it was traced with, ready for `package(..., target="executorch")`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kit.data import Dataset
from kit.errors import EdgeKitError


@dataclass
class Int8Static:
    """Static int8: weights and activations int8, activation ranges from calibration data."""

    per_channel: bool = True
    calib_batches: int = 8
    batch_size: int = 32


@dataclass
class Int8Dynamic:
    """Dynamic int8: int8 weights, activation scales computed per call (Linear layers only)."""

    per_channel: bool = True


@dataclass
class QuantizedModel:
    module: nn.Module  # the converted PT2E graph module (q/dq ops around float ops)
    example_input: tuple[torch.Tensor, ...]
    config: object

    def __call__(self, x):
        return self.module(x)

    def eval(self):
        return self


def _export_for_quant(model: nn.Module, example: tuple[torch.Tensor, ...]):
    try:
        return torch.export.export(model.eval(), example, strict=False).module()
    except Exception as e:
        raise EdgeKitError(
            f"torch.export cannot trace {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "remove data-dependent Python control flow from forward() or wrap it in torch.cond"
        ) from e


def quantize(model: nn.Module, config: Int8Static | Int8Dynamic, calib: Dataset | None,
             input_shape: tuple[int, ...] | None = None) -> QuantizedModel:
    """Quantize `model` for XNNPACK with PT2E and calibrate it on `calib`."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if input_shape is None:
        if calib is None or len(calib) == 0:
            raise EdgeKitError("calibration set is empty; give --data with at least one sample (or an input shape for dynamic int8)")
        input_shape = (1, *calib.x.shape[1:])
    example = (torch.zeros(input_shape, dtype=torch.float32),)
    dynamic = isinstance(config, Int8Dynamic)
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=config.per_channel, is_dynamic=dynamic)
    )
    graph = _export_for_quant(model, example)
    try:
        prepared = prepare_pt2e(graph, quantizer)
    except Exception as e:
        raise EdgeKitError(f"the XNNPACK quantizer cannot handle {type(model).__name__}: {str(e).splitlines()[0][:200]}") from e
    if not dynamic:
        if calib is None or len(calib) == 0:
            raise EdgeKitError("calibration set is empty; static int8 needs calibration samples (--data)")
        with torch.no_grad():
            n = 0
            for xb, _ in calib.batches(1):
                # The exported graph has a fixed batch of one, so calibrate sample by sample.
                prepared(torch.from_numpy(np.ascontiguousarray(xb)))
                n += 1
                if n >= config.calib_batches * config.batch_size:
                    break
    converted = convert_pt2e(prepared)
    return QuantizedModel(module=converted, example_input=example, config=config)
