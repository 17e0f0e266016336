"""Line up two per-operator tables (an int8 artifact and its fp32 twin) by operator type and say
where the time went. Types are normalised (QLinearConv and Conv are both Conv; XNNPACK's
"Convolution (NHWC, QS8)" and "Convolution (NHWC, F32)" are both Convolution), so a row present
in one table only (QuantizeLinear/DequantizeLinear around a float op) stands out."""

from __future__ import annotations


def _by_kind(table: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in table.get("rows", []):
        if r["level"] != "op":
            continue
        k = out.setdefault(r["kind"], {"calls": 0.0, "total_ms": 0.0, "quantized": 0, "rows": 0})
        k["calls"] += r["calls"]
        k["total_ms"] += r["total_ms"]
        k["rows"] += 1
        k["quantized"] += bool(r.get("quantized"))
    return out


def compare_ops(a: dict, b: dict) -> dict:
    """{"rows": [{kind, a_ms, b_ms, delta_ms, a_calls, b_calls, a_quantized, b_quantized}], "a_run_ms",
    "b_run_ms", "summary"}; rows by |delta| (B - A, per run), largest first."""
    ka, kb = _by_kind(a), _by_kind(b)
    rows = []
    for kind in sorted(set(ka) | set(kb)):
        ra, rb = ka.get(kind), kb.get(kind)
        rows.append({"kind": kind, "a_ms": ra["total_ms"] if ra else None, "b_ms": rb["total_ms"] if rb else None,
                     "delta_ms": (rb["total_ms"] if rb else 0.0) - (ra["total_ms"] if ra else 0.0),
                     "a_calls": ra["calls"] if ra else None, "b_calls": rb["calls"] if rb else None,
                     "a_quantized": f"{ra['quantized']}/{ra['rows']}" if ra else None,
                     "b_quantized": f"{rb['quantized']}/{rb['rows']}" if rb else None})
    rows.sort(key=lambda r: -abs(r["delta_ms"]))
    a_ms, b_ms = a.get("run_ms"), b.get("run_ms")
    parts = []
    for r in rows[:4]:
        where = " (only in B)" if r["a_ms"] is None else " (only in A)" if r["b_ms"] is None else ""
        parts.append(f"{r['kind']} {r['delta_ms']:+.3f} ms{where}")
    head = (f"B runs {b_ms - a_ms:+.3f} ms per run against A ({a_ms:.3f} -> {b_ms:.3f} ms, profiled)"
            if a_ms and b_ms else "run times unknown")
    return {"rows": rows, "a_run_ms": a_ms, "b_run_ms": b_ms,
            "summary": head + ("; where it went: " + ", ".join(parts) if parts else "")}
