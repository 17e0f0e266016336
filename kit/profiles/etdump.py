"""ExecuTorch's ETDump -> per-operator rows with executorch.devtools Inspector.

With the ETRecord written at packaging time (beside the bundle, kit.profiles.etrecord_path), the
delegate block is named by its backend and every row lists the aten ops it stands for (op_types);
without it the rows are the same (XNNPACK's own operator names, ExecuTorch's kernel names) but the
block's backend and the aten ops behind each row are unknown, which the note says.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

_LAYOUT = re.compile(r"\(([^)]*)\)")
_QUANT = ("QS8", "QU8", "QC8", "QD8", "QP8", "QC4", "QB4")
_SKIP = {"Method::execute", "OPERATOR_CALL", "Method::init", "Program::load_method"}


def _xnn_kind(name: str) -> tuple[str, bool]:
    op = name.split(" (")[0].split(" #")[0].strip()  # "Convolution (NHWC, QS8) IGEMM #3" -> Convolution
    m = _LAYOUT.search(name)
    return op, any(q in (m.group(1) if m else "") for q in _QUANT)


def _native_kind(name: str) -> tuple[str, bool]:
    op = name[len("native_call_"):] if name.startswith("native_call_") else name
    op = op.split(".")[0]
    return op, "quantize" in op


def _inspect(raw: bytes, etrecord: Path | None):
    from executorch.devtools import Inspector

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "profile.etdp"
        path.write_bytes(raw)
        return Inspector(etdump_path=str(path), etrecord=str(etrecord) if etrecord else None)


def parse_etdump(raw: bytes, runs: int, execs: int, etrecord: Path | None) -> dict:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inspector = _inspect(raw, etrecord)
    rows, run_ms, delegates, native_calls = [], None, 0, 0
    for block in inspector.event_blocks:
        events = [e for e in block.events if e.perf_data is not None and e.perf_data.raw]
        names = {e.name for e in events}
        if "Method::execute" not in names:
            continue  # load/init blocks
        has_native = any(n.startswith("native_call_") for n in names)
        for e in events:
            samples = list(e.perf_data.raw)
            per_run = max(1, round(len(samples) / execs))  # executions of this event in one run
            last = samples[-per_run * runs:]
            total = sum(last) / runs
            if e.name == "Method::execute":
                run_ms = total
                continue
            if e.name in _SKIP and not (e.name == "OPERATOR_CALL" and not has_native):
                continue
            op_types = list(e.op_types or [])
            if e.name == "DELEGATE_CALL":
                delegates += 1
                backend = getattr(e, "delegate_backend_name", None)
                rows.append({"name": f"{backend or 'delegate'} block #{delegates}", "type": "delegate block",
                             "kind": "delegate block", "level": "block", "block": backend, "calls": per_run,
                             "total_ms": total, "quantized": None, "op_types": op_types})
                continue
            if e.is_delegated_op:
                kind, quant = _xnn_kind(e.name)
                block = getattr(e, "delegate_backend_name", None) or "delegate"
            else:
                native_calls += 1
                kind, quant = _native_kind(e.name)
                block = None
                quant = quant or any("quantize" in t for t in op_types)
            rows.append({"name": e.name, "type": kind, "kind": kind, "level": "op", "block": block, "calls": per_run,
                         "total_ms": total, "quantized": quant, "op_types": op_types})
    for r in rows:
        r["mean_ms"] = r["total_ms"] / r["calls"] if r["calls"] else 0.0
        r["share"] = r["total_ms"] / run_ms if run_ms else None
    rows.sort(key=lambda r: (r["level"] != "block", -r["total_ms"]))
    inner = sum(1 for r in rows if r["level"] == "op" and r["block"] is not None)
    notes = []
    if delegates and not inner:
        notes.append("XNNPACK reported only the delegate block(s), no per-operator events inside them")
    elif delegates:
        notes.append(f"{delegates} delegate block(s) with XNNPACK's per-operator events inside")
    notes.append(f"{native_calls} operator(s) outside the delegate")
    if etrecord is None:
        notes.append("no ETRecord beside the bundle: rows carry XNNPACK/kernel names only (no aten op types, no backend name)")
    if run_ms is None:
        return {"rows": rows, "run_ms": None, "etrecord": etrecord is not None, "error": "the ETDump has no Method::execute events"}
    return {"run_ms": run_ms, "rows": rows, "etrecord": etrecord is not None, "note": "; ".join(notes)}
