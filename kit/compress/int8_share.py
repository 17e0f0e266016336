"""Share of a model's multiply-accumulates that run in int8, read from the quantized artifact
itself (a PT2E graph or a QDQ .onnx file): a Conv/Linear/Gemm/MatMul counts as int8 when its weight
comes out of a dequantize node. The figure the real-models issue asks for (>= 95%)."""

from __future__ import annotations

from pathlib import Path



def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _shape(graph_module, node):
    """Shape of a weight node: its traced value, a parameter it reads, or what it dequantizes."""
    val = getattr(node, "meta", {}).get("val")
    if val is not None:
        return tuple(val.shape)
    if getattr(node, "op", "") == "get_attr":
        return tuple(getattr(graph_module, node.target).shape)
    if getattr(node, "op", "") == "call_function" and node.args:
        return _shape(graph_module, node.args[0])
    return None


def fx_macs(graph_module) -> list[dict]:
    """Rows {node, macs, int8} for each conv/linear of a (converted) PT2E graph, per sample."""
    rows = []
    for n in graph_module.graph.nodes:
        target = str(n.target)
        if n.op != "call_function" or not ("conv" in target or "linear" in target) or len(n.args) < 2:
            continue
        val, w = n.meta.get("val"), n.args[1]
        wshape = _shape(graph_module, w)
        if val is None or wshape is None:
            continue
        per_out = _prod(wshape[1:])  # Cin/groups * k... (conv) or in_features (linear)
        macs = _prod(val.shape[1:]) * per_out
        int8 = getattr(w, "op", "") == "call_function" and "dequantize" in str(w.target)
        rows.append({"node": n.name, "macs": macs, "int8": bool(int8)})
    return rows


def onnx_macs(model_path: str | Path) -> list[dict]:
    """Rows {node, macs, int8} for each Conv/Gemm/MatMul of an .onnx file (batch 1)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(model_path)))
    g = model.graph
    shapes = {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {i.name: numpy_helper.to_array(i).shape for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    rows = []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        w_name, int8 = n.input[1], False
        src = producer.get(w_name)
        if src is not None and src.op_type == "DequantizeLinear":
            w_name, int8 = src.input[0], True
        w_shape = inits.get(w_name) or shapes.get(w_name)
        out_shape = shapes.get(n.output[0])
        if not w_shape or not out_shape:
            continue
        if n.op_type == "Conv":
            macs = _prod(out_shape[1:]) * _prod(w_shape[1:])
        else:  # Gemm/MatMul: output elements x the reduced dimension
            k = w_shape[0] if n.op_type == "MatMul" else (w_shape[1] if _trans_b(n) else w_shape[0])
            macs = _prod(out_shape[1:] if len(out_shape) > 1 else out_shape) * int(k)
        rows.append({"node": n.name, "macs": int(macs), "int8": int8})
    return rows


def _trans_b(node) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def share(rows: list[dict]) -> dict:
    total = sum(r["macs"] for r in rows)
    int8 = sum(r["macs"] for r in rows if r["int8"])
    float_rows = sorted((r for r in rows if not r["int8"]), key=lambda r: -r["macs"])
    return {"int8_macs_share": round(int8 / total, 4) if total else None, "macs": int(total),
            "float_layers": [r["node"] for r in float_rows[:10]]}


def artifact_share(artifact) -> dict:
    """`share` of a QuantizedModel (its .module), a torch graph module or an .onnx path."""
    if isinstance(artifact, (str, Path)):
        return share(onnx_macs(artifact))
    return share(fx_macs(getattr(artifact, "module", artifact)))


__all__ = ["artifact_share", "fx_macs", "onnx_macs", "share"]
