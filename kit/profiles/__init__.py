"""Per-operator profiles from the device's raw profile (`bench --profile`): decode what the agent
sent back, turn ExecuTorch's ETDump (executorch.devtools Inspector, with the ETRecord written at
packaging time when it is beside the bundle) or ONNX Runtime's trace JSON into one table, and line
up two tables (int8 vs its fp32 twin) by operator type.

A table is a plain dict (JSON, stored with the measurement):
  {"format", "runs", "run_ms", "rows": [{"name", "type", "kind", "level", "block", "calls", "total_ms",
   "mean_ms", "share", "quantized"}], "note", "etrecord", "error"}
Per-run figures: `calls` per run, `total_ms` per run (averaged over the profiled runs), `mean_ms` =
total_ms / calls, `share` = total_ms / run_ms. `level` is "op" (an operator, inside a delegate or
not) or "block" (an XNNPACK delegate call, which contains its "op" rows): sum "op" rows only.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from pathlib import Path

from kit.errors import EdgeKitError

__all__ = ["profile_table", "raw_bytes", "etrecord_path", "compare_ops", "top_rows", "op_time_ms"]


def etrecord_path(bundle_path: str | Path) -> Path:
    """Where packaging keeps a .pte bundle's ETRecord: beside the bundle (never pushed to devices)."""
    p = Path(bundle_path)
    return p.with_name(p.name + ".etrecord")


def raw_bytes(doc: dict) -> bytes:
    """The raw profile the agent sent (zlib+base64), checked against its sha256."""
    if doc.get("encoding") != "zlib+base64" or not isinstance(doc.get("data"), str):
        raise EdgeKitError(f"profile: no raw data in the agent's reply ({doc.get('error') or 'unknown encoding'})")
    try:
        raw = zlib.decompress(base64.b64decode(doc["data"]), bufsize=1 << 20)
    except (ValueError, zlib.error) as e:
        raise EdgeKitError(f"profile: the agent's profile data is not zlib+base64 ({e}); re-run bench --profile") from e
    if doc.get("sha256") and hashlib.sha256(raw).hexdigest() != doc["sha256"]:
        raise EdgeKitError("profile: the profile data does not match its sha256; re-run bench --profile")
    return raw


def profile_table(doc: dict, bundle_path: str | Path | None = None) -> dict:
    """The per-operator table for the agent's profile document (an `error` entry when there is none)."""
    base = {"format": doc.get("format"), "runs": doc.get("runs"), "pte_runtime": doc.get("pte_runtime"),
            "profiled_latency": doc.get("latency"), "bytes": doc.get("bytes")}
    if doc.get("error"):
        return {**base, "rows": [], "error": doc["error"]}
    raw = raw_bytes(doc)
    runs = int(doc.get("runs") or 1)
    execs = runs + 1 + int(doc.get("warmup") or 0)  # the reference run, the warm-up, the profiled runs
    if doc.get("format") == "ort-trace-json":
        from kit.profiles.ort import parse_trace

        return {**base, **parse_trace(raw, runs)}
    if doc.get("format") == "etdump":
        from kit.profiles.etdump import parse_etdump

        rec = etrecord_path(bundle_path) if bundle_path is not None else None
        return {**base, **parse_etdump(raw, runs, execs, rec if rec is not None and rec.is_file() else None)}
    return {**base, "rows": [], "error": f"profile format {doc.get('format')!r} is not one the kit reads"}


def op_time_ms(table: dict) -> float:
    """Sum of the operator rows per run (delegate blocks excluded: their operators are rows)."""
    return sum(r["total_ms"] for r in table.get("rows", []) if r["level"] == "op")


def top_rows(table: dict, n: int = 5) -> list[dict]:
    return sorted((r for r in table.get("rows", []) if r["level"] == "op"), key=lambda r: -r["total_ms"])[:n]


def compare_ops(a: dict, b: dict) -> dict:
    from kit.profiles.compare import compare_ops as _cmp

    return _cmp(a, b)
