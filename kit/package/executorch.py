"""ExecuTorch: torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> .pte."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kit.errors import EdgeKitError


@dataclass
class Delegation:
    delegated_subgraphs: int
    delegated_nodes: int
    non_delegated_nodes: int
    non_delegated_ops: dict[str, int] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        total = self.delegated_nodes + self.non_delegated_nodes
        return self.delegated_nodes / total if total else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "coverage": round(self.coverage, 4)}


# Ops that are bookkeeping, not compute: they always stay outside the delegate and cost nothing.
_FREE_OPS = {"getitem", "executorch_call_delegate", "output", "alloc"}


def export_pte(module: torch.nn.Module, example_input: tuple[torch.Tensor, ...], out_path: str | Path,
               etrecord_path: str | Path | None = None) -> Delegation:
    """Lower `module` to XNNPACK and write the .pte atomically; return the delegation summary.
    `etrecord_path`: also write the ETRecord (the graphs behind the .pte's debug handles, for
    executorch.devtools Inspector: per-operator profiles name aten ops and the delegate's backend)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    out_path = Path(out_path)
    try:
        exported = torch.export.export(module, example_input, strict=False)
    except Exception as e:
        raise EdgeKitError(f"torch.export cannot trace the model for ExecuTorch ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e
    try:
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                           generate_etrecord=etrecord_path is not None)
    except Exception as e:  # SpecViolationError, a partitioner or pass refusing an op: one line
        raise lowering_error(exported, e) from e
    # Scalar constants of decomposed ops (hardswish/hardsigmoid in MobileNetV3: 18 of them) stay
    # outside the delegate as _to_dim_order_copy nodes run on every call; fold them into constants
    # so the graph is fully delegated (MobileNetV3-Small: 92% -> 100% of nodes).
    constant_prop_pass(edge.exported_program())
    info = get_delegation_info(edge.exported_program().graph_module)
    non_delegated = {}
    for row in info.delegation_by_operator.values():
        if row.non_delegated and row.op_type not in _FREE_OPS:
            non_delegated[row.op_type] = row.non_delegated
    try:
        program = edge.to_executorch()
    except Exception as e:  # an op without an ExecuTorch kernel (no out variant)
        raise lowering_error(exported, e) from e
    tmp = out_path.with_name(out_path.name + ".part")
    tmp.write_bytes(program.buffer)
    tmp.replace(out_path)
    if etrecord_path is not None:
        _save_etrecord(program, Path(etrecord_path))
    return Delegation(
        delegated_subgraphs=info.num_delegated_subgraphs,
        delegated_nodes=info.num_delegated_nodes,
        non_delegated_nodes=sum(non_delegated.values()),
        non_delegated_ops=non_delegated,
    )


def _save_etrecord(program, path: Path) -> None:
    """Best effort: a profile without an ETRecord still has every row (kit.profiles.etdump says what is lost)."""
    try:
        tmp = path.with_name(path.name + ".part")
        program.get_etrecord().save(str(tmp))
        tmp.replace(path)
    except Exception:  # noqa: BLE001 - the .pte is what packaging promises; the ETRecord is extra
        path.unlink(missing_ok=True)


_OP = re.compile(r"\b(aten|quantized_decomposed|dim_order_ops|torchao)[.:]+([A-Za-z0-9_]+)")


def _node_for(exported, namespace: str, op: str):
    for node in exported.graph_module.graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and namespace in target and (f".{op}." in target or target.endswith(f".{op}")):
            return node
    return None


def _where(node) -> str:
    """`layer features.3 (node abs_1, model.py:12)`: the innermost module and the source line of a node."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    layer = stack[-1][0] if stack else ""
    place = f"layer {layer}" if layer else "the model's own forward()"
    trace = [ln.strip() for ln in (node.meta.get("stack_trace") or "").splitlines() if ln.strip().startswith("File ")]
    src = re.match(r'File "([^"]+)", line (\d+)', trace[-1]) if trace else None
    at = f", {Path(src.group(1)).name}:{src.group(2)}" if src else ""
    return f"{place} (node {node.name}{at})"


def lowering_error(exported, e: Exception) -> EdgeKitError:
    """One line for an ExecuTorch lowering failure: the op, the layer that holds it, what to do."""
    text = str(e)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    match = _OP.search(text)
    if match is None:
        return EdgeKitError(f"ExecuTorch cannot lower the model ({type(e).__name__}: {first[:200]}); "
                            "package it for onnxruntime instead, or keep the failing layer in float (skip_layers)")
    op = f"{match.group(1)}.{match.group(2)}"
    node = _node_for(exported, match.group(1), match.group(2))
    where = _where(node) if node is not None else "a node of the exported graph"
    return EdgeKitError(f"ExecuTorch cannot lower op {op} in {where}: {type(e).__name__}: {first[:160].rstrip(':')}; "
                        "replace that op, keep the layer in float (skip_layers), or use the onnxruntime runtime")


def run_pte(path: str | Path, inputs: list) -> list:
    """Run a .pte on the host with ExecuTorch's Python runtime (numpy in, numpy out)."""
    import numpy as np
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(Path(path)).load_method("forward")
    outs = method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
    return [o.numpy() for o in outs]


class PteRunner:
    """Load once, run many (accuracy evaluation over a test set)."""

    def __init__(self, path: str | Path):
        from executorch.runtime import Runtime

        self._method = Runtime.get().load_program(Path(path)).load_method("forward")

    def __call__(self, x):
        """One input array -> the output array; several inputs (a tuple) or several outputs: kit.io."""
        import numpy as np

        from kit.io import Outputs, is_multi, to_torch

        if not is_multi(x):
            outs = self._method.execute([torch.from_numpy(np.ascontiguousarray(x))])
        else:
            outs = self._method.execute(list(to_torch(x)))
        if len(outs) == 1:
            return outs[0].numpy()
        return Outputs([o.numpy() for o in outs])
