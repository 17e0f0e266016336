"""Conv/Linear followed by ReLU6 (hardtanh 0..6) annotated as one fused pattern for XNNPACK.

Why by hand: executorch 1.5.1's XNNPACKQuantizer fuses Conv+ReLU but not Conv+ReLU6. Unfused,
the conv's output is quantized with its own pre-activation range and ReLU6 shares it: in the real
MobileNetV2 a depthwise conv's range spans 24, so ReLU6's 0..6 gets 63 of the 256 levels (output
SQNR 8.9 dB with MinMax). Annotated like Conv+ReLU, only the ReLU6 output is quantized (13.7 dB,
same latency); XNNPACK's FuseActivationPass folds the clamp into the conv, so the .pte stays fully
delegated. The annotator mirrors executorch's `_do_annotate_conv_relu`.
"""

from __future__ import annotations

import torch
from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as xq
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
from torch.fx import Node
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

_HARDTANH = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
_LINEAR = (torch.ops.aten.linear.default,)


def _is_relu6(node: Node) -> bool:
    if node.op != "call_function" or node.target not in _HARDTANH:
        return False
    low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
    return low == 0.0


def annotate_conv_relu6(gm: torch.fx.GraphModule, config, filter_fn=None) -> int:
    """Annotate every single-user Conv/Linear -> ReLU6 pair; returns how many."""
    count = 0
    for act in gm.graph.nodes:
        if not _is_relu6(act):
            continue
        op = act.args[0]
        if not isinstance(op, Node) or not (xq._is_conv_node(op) or op.target in _LINEAR) or len(op.users) > 1:
            continue
        qspecs = {op.args[0]: xq.get_input_act_qspec(config), op.args[1]: xq.get_weight_qspec(config)}
        partition = [act, op, op.args[1]]
        bias = op.args[2] if len(op.args) > 2 else None
        if isinstance(bias, Node):
            qspecs[bias] = xq.get_bias_qspec(config)
            partition.append(bias)
        if xq._is_annotated(partition) or (filter_fn and not all(filter_fn(n) for n in partition)):
            continue
        op.meta[xq.Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=qspecs, _annotated=True)
        act.meta[xq.Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=xq.get_output_act_qspec(config),
                                                               _annotated=True)
        xq._mark_nodes_as_annotated(partition)
        count += 1
    return count


class KitXnnpackQuantizer(XNNPACKQuantizer):
    """XNNPACKQuantizer that first annotates Conv/Linear+ReLU6 (static PTQ configs only)."""

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        cfg = self.global_config
        if cfg is not None and not cfg.is_qat and not cfg.input_activation.is_dynamic:
            annotate_conv_relu6(model, cfg, self.filter_fn)
        return super().annotate(model)
