"""ONNX Runtime's profiler trace (chrome-trace JSON) -> per-operator rows for the profiled runs only."""

from __future__ import annotations

import json

from kit.errors import EdgeKitError

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QGemm",
                 "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_INT_TYPES = {"int8", "uint8"}


def kind_of(op: str) -> str:
    """The operator type two artifacts are lined up by: QLinearConv and Conv are both Conv."""
    if op.startswith("QLinear"):
        return op[len("QLinear"):]
    if op == "QGemm":
        return "Gemm"
    if op in ("ConvInteger", "MatMulInteger"):
        return op[:-len("Integer")]
    return op


def _quantized(op: str, args: dict) -> bool:
    if op.startswith("QLinear") or op in QUANTIZED_OPS:
        return True
    types = [k for d in args.get("input_type_shape", []) if isinstance(d, dict) for k in d]
    return any(t in _INT_TYPES for t in types)


def parse_trace(raw: bytes, runs: int) -> dict:
    try:
        events = json.loads(raw)
    except ValueError as e:
        raise EdgeKitError(f"profile: ONNX Runtime's trace is not JSON ({e}); re-run bench --profile") from e
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])
    if not model_runs:
        return {"rows": [], "error": "ONNX Runtime's trace has no model_run events"}
    timed = model_runs[-runs:]  # drop the reference run and the warm-up
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in timed]
    run_ms = sum(e["dur"] for e in timed) / len(timed) / 1e3
    rows: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if not any(lo <= e["ts"] <= hi for lo, hi in windows):
            continue
        args = e.get("args") or {}
        name = e["name"][: -len("_kernel_time")]
        op = args.get("op_name", "?")
        r = rows.setdefault(name, {"name": name, "type": op, "kind": kind_of(op), "level": "op",
                                   "block": args.get("provider"), "n": 0, "us": 0.0, "quantized": _quantized(op, args)})
        r["n"] += 1
        r["us"] += e.get("dur", 0)
    out = []
    for r in rows.values():
        total = r.pop("us") / 1e3 / len(timed)
        calls = r.pop("n") / len(timed)
        out.append({**r, "calls": calls, "total_ms": total, "mean_ms": total / calls if calls else 0.0,
                    "share": total / run_ms if run_ms > 0 else None})
    out.sort(key=lambda r: -r["total_ms"])
    return {"run_ms": run_ms, "rows": out, "etrecord": None,
            "note": f"ONNX Runtime profiler: {len(timed)} profiled run(s), every node's kernel time"}
