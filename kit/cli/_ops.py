"""Tables for per-operator profiles and the memory split (bench, results show, compare)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table


def _f(v, spec=".3f") -> str:
    return "" if v is None else format(v, spec)


def memory_line(mem: dict | None) -> str:
    """One line: runtime import, model load, inference peak, planned, load and first-inference time."""
    mem = mem or {}
    if not mem:
        return "memory: not recorded by this agent"
    imp = mem.get("runtime_import_mb")
    parts = [f"runtime {_f(mem.get('runtime_rss_mb'), '.1f')} MB RSS" + (f" (import +{imp:.1f} MB)" if imp is not None else ""),
             f"model load +{_f(mem.get('model_load_mb'), '.1f')} MB",
             f"inference peak {_f(mem.get('inference_peak_rss_mb'), '.1f')} MB",
             "planned " + (f"{mem['planned_mb']:.2f} MB" if mem.get("planned_mb") is not None else "n/a"),
             f"load {_f(mem.get('load_ms'), '.1f')} ms", f"first inference {_f(mem.get('first_inference_ms'), '.2f')} ms"]
    return "memory: " + ", ".join(parts)


def ops_table(profile: dict | None, title: str, limit: int = 25) -> Table | str:
    if not profile:
        return f"{title}: no profile stored (bench with --profile)"
    if profile.get("error"):
        return f"{title}: no profile: {profile['error']}"
    t = Table(title=escape(f"{title}: {profile.get('format')}, {profile.get('runs')} profiled run(s), "
                           f"{_f(profile.get('run_ms'))} ms per run"))
    for col in ("operator / block", "type", "in", "calls", "total ms", "mean ms", "share", "int8"):
        t.add_column(col, justify="left" if col in ("operator / block", "type", "in") else "right", overflow="fold")
    for r in profile.get("rows", [])[:limit]:
        t.add_row(escape(("" if r["level"] == "op" and r.get("block") and "block" not in r["name"] else "") + r["name"][:60]),
                  escape(r["type"]), escape(r.get("block") or ""), _f(r["calls"], "g"), _f(r["total_ms"], ".4f"),
                  _f(r["mean_ms"], ".4f"), "" if r.get("share") is None else f"{100 * r['share']:.1f}%",
                  {True: "yes", False: "no", None: ""}[r.get("quantized")])
    if len(profile.get("rows", [])) > limit:
        t.caption = f"{len(profile['rows']) - limit} more row(s) in --json"
    if profile.get("note"):
        t.caption = escape(((t.caption + "; ") if t.caption else "") + profile["note"])
    return t


def ops_compare_table(c: dict, a: str, b: str) -> Table:
    t = Table(title=escape(f"operators: {a} (A) vs {b} (B), ms per profiled run"))
    for col in ("type", "A ms", "B ms", "B-A ms", "A calls", "B calls", "A int8", "B int8"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for r in c["rows"]:
        t.add_row(escape(r["kind"]), _f(r["a_ms"], ".4f"), _f(r["b_ms"], ".4f"), _f(r["delta_ms"], "+.4f"),
                  _f(r["a_calls"], "g"), _f(r["b_calls"], "g"), r["a_quantized"] or "", r["b_quantized"] or "")
    t.caption = escape(c["summary"])
    return t
