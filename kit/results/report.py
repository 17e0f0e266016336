"""HTML report: one self-contained page (plots embedded as PNG data URIs) from measurement rows.

Sections: warnings (emulated devices, throttling, failed reference checks, noisy runs, compressed
artifacts that are not faster than their uncompressed twin), per-device latency bars (p50 with a
p90 tick and a whisker to p99), accuracy-vs-latency and size-vs-latency Pareto plots, energy per
inference where measured, the delegation summary per artifact, and a table that ties every
numbered point in the plots to its artifact, device and recipe.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit.results.plots import device_colors, energy_bars, latency_bars, latency_front, pareto_plot, png_base64
from kit.results.report_ops import memory_section, ops_section
from kit.results.store import decode
from kit.results.twins import Point, Speedup, compression_state, speedups, twin_speedups

__all__ = ["render", "write_report", "write_store_report", "collect_warnings", "Warnings", "NOISY_CV",
           # kit.results.twins, re-exported for callers of the report's earlier home
           "Point", "Speedup", "compression_state", "speedups", "twin_speedups"]

NOISY_CV = 0.2  # coefficient of variation above which a latency figure is flagged as noisy


def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def _fmt(v, spec=".3f", none="—") -> str:
    return none if v is None else format(v, spec)


@dataclass
class Warnings:
    items: list[tuple[str, str]] = field(default_factory=list)  # (css class, text)

    def add(self, kind: str, text: str) -> None:
        self.items.append((kind, text))


def collect_warnings(points: list[Point], devices: dict[str, bool], ups: list[Speedup]) -> Warnings:
    w = Warnings()
    for name, emulated in devices.items():
        if emulated:
            w.add("emulated", f"Device {name} is emulated: its latency comes from an emulator on another CPU, not from real hardware.")
    for p in points:
        thermal = p.row.get("thermal") or {}
        if thermal.get("throttled"):
            w.add("throttled", f"#{p.n} {p.label} on {p.device}: the device throttled during the run; its latency is pessimistic.")
        rise = _temperature_rise(thermal)
        if rise is not None and rise >= 10:
            w.add("throttled", f"#{p.n} {p.label} on {p.device}: temperature rose {rise:.0f} °C during the run; throttling is likely.")
        if p.row.get("reference_passed") is False:
            w.add("failed", f"#{p.n} {p.label} on {p.device}: output did not match the bundle's reference output.")
        if (p.cv or 0) > NOISY_CV:
            w.add("noisy", f"#{p.n} {p.label} on {p.device}: noisy latency (cv {p.cv:.2f}); compare with care.")
    for s in ups:
        if s.verdict != "faster":
            w.add("not-faster", s.honest_line)
    return w


def _temperature_rise(thermal: dict) -> float | None:
    before, after = thermal.get("before_c"), thermal.get("after_c")
    if not isinstance(before, dict) or not isinstance(after, dict) or not before or not after:
        return None
    try:
        return max(after.values()) - max(before.values())
    except (TypeError, ValueError):
        return None


# --- the page ----------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}
td.num{text-align:right}th{background:#f3f3f3}.badge{background:#b00;color:#fff;border-radius:3px;padding:0 5px;font-size:11px}
li.emulated{color:#b00}li.throttled,li.failed{color:#a40}li.not-faster{font-weight:bold}li.noisy{color:#666}
img{max-width:100%;border:1px solid #eee}code{font-size:12px}"""


def _table(table_id: str, head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f'<table id="{table_id}"><tr>{th}</tr>{body}</table>'


def _img(img_id: str, alt: str, fig) -> str:
    return f'<img id="{img_id}" alt="{_esc(alt)}" src="data:image/png;base64,{png_base64(fig)}">'


def _device_cell(name: str, devices: dict[str, bool]) -> str:
    return _esc(name) + (' <span class="badge" title="emulated device">emulated</span>' if devices.get(name) else "")


def _delegation_rows(points: list[Point]) -> list[list[str]]:
    seen, rows = set(), []
    for p in points:
        if p.sha256 in seen:
            continue
        seen.add(p.sha256)
        deleg = (p.row.get("manifest") or {}).get("delegation")
        if deleg:
            total = (deleg.get("delegated_nodes") or 0) + (deleg.get("non_delegated_nodes") or 0)
            share = f'{100 * deleg["delegated_nodes"] / total:.0f}%' if total else "—"
            ops = ", ".join(f"{k} ×{v}" for k, v in sorted((deleg.get("non_delegated_ops") or {}).items())) or "none"
            rows.append([_esc(p.label), _esc(p.runtime), _esc(deleg.get("delegated_subgraphs")), _esc(deleg.get("delegated_nodes")),
                         _esc(deleg.get("non_delegated_nodes")), share, _esc(ops)])
        else:
            rows.append([_esc(p.label), _esc(p.runtime), "—", "—", "—", "—",
                         "no delegation summary in the manifest" + (" (ONNX Runtime: CPU execution provider)" if p.runtime == "onnxruntime" else "")])
    return rows


def gate_text(gate: dict | None) -> str:
    """The compression gate recorded in a bundle's manifest, with its basis and units, e.g.
    'agreement 96.50% >= floor 90.00% (share of inputs, no labels)'."""
    if not isinstance(gate, dict):
        return "—"
    checks = gate.get("checks")
    if not checks:  # an older manifest: the top-1 (or agreement) drop in points
        budget = gate.get("budget_points")
        return (f"{gate.get('basis')}: drop {_fmt(gate.get('drop_points'), '.2f')} pt"
                + ("" if budget is None else f" (budget {budget:g} pt)") + ("" if gate.get("passed", True) else " FAILED"))
    parts = []
    for c in checks:
        pct = c.get("unit") == "share"
        value = f"{100 * float(c['value']):.2f}%" if pct else f"{float(c['value']):.4g} {c.get('unit')}"
        limit = f"{100 * float(c['limit']):.2f}%" if pct else f"{float(c['limit']):g} {c.get('unit')}"
        op = ">=" if c.get("bound") == "min" else "<="
        parts.append(f"{c['metric']} {value} {op} {'floor' if op == '>=' else 'budget'} {limit}"
                     + ("" if c.get("passed") else " FAILED"))
    where = "labelled data" if gate.get("labelled") else "no labels"
    return f"{'; '.join(parts)} (basis {gate.get('basis')}, {where})"


def render(rows: list[dict], title: str = "EdgeKit report", *, confidence: float = 0.99) -> str:
    """The report page as one HTML string."""
    points = [Point(i + 1, decode(r)) for i, r in enumerate(rows)]
    devices: dict[str, bool] = {}
    for p in points:
        devices[p.device] = devices.get(p.device, False) or bool(p.row.get("emulated") or (p.row.get("device_info") or {}).get("emulated"))
    colors = device_colors(list(devices))
    ups = speedups(points, confidence)
    warns = collect_warnings(points, devices, ups)
    acc = lambda p: None if p.accuracy_value is None else 100 * p.accuracy_value  # noqa: E731
    size = lambda p: None if p.size_bytes is None else p.size_bytes / 1024  # noqa: E731
    acc_front = {p.n for d in devices for p in latency_front([q for q in points if q.device == d], acc, True)}
    size_front = {p.n for d in devices for p in latency_front([q for q in points if q.device == d], size, False)}

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1>",
             f"<p id='summary'>{len(points)} measurements of {len({p.sha256 for p in points})} artifacts on "
             f"{len(devices)} device(s): {', '.join(_device_cell(d, devices) for d in devices)}. "
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p>"]
    if not points:
        parts.append("<p>No measurements recorded yet.</p></body></html>")
        return "".join(parts)

    parts.append("<h2>Warnings</h2>")
    if warns.items:
        parts.append("<ul id='warnings'>" + "".join(f"<li class='{k}'>{_esc(t)}</li>" for k, t in warns.items) + "</ul>")
    else:
        parts.append("<p id='warnings'>None: no emulated devices, no throttling, reference checks passed, every compressed artifact beats its twin.</p>")

    if ups:
        parts.append("<h2>Compressed vs uncompressed twin</h2><p>Same model name, runtime, device and threads; "
                     f"the verdict uses the recorded repetitions ({confidence:.0%} bootstrap CI and Mann-Whitney U).</p>")
        parts.append(_table("speedups", ["compressed", "uncompressed twin", "device", "p50 ms", "twin p50 ms", "speed-up", "verdict"],
                            [[f"#{s.compressed.n} {_esc(s.compressed.label)}", f"#{s.twin.n} {_esc(s.twin.label)}",
                              _device_cell(s.compressed.device, devices), _fmt(s.compressed.p50_ms), _fmt(s.twin.p50_ms),
                              f"{s.speedup:.2f}x", "faster" if s.verdict == "faster" else f"<b>{_esc(s.verdict)}</b>"] for s in ups],
                            {3, 4, 5}))

    parts.append("<h2>Latency per device</h2>")
    parts.append(_img("latency-bars", "per-device latency bars, p50 to p99", latency_bars(points, devices, colors)))
    parts.append("<h2>Accuracy vs latency (Pareto)</h2>")
    if any(acc(p) is not None for p in points):
        parts.append(_img("pareto-accuracy", "accuracy vs latency Pareto plot",
                          pareto_plot(points, devices, colors, acc, "test top-1 accuracy (%)",
                                      "Accuracy vs latency: dashed = Pareto front per device (up and left is better)", True)))
    else:
        parts.append("<p>No accuracy recorded for these artifacts.</p>")
    parts.append("<h2>Size vs latency (Pareto)</h2>")
    parts.append(_img("pareto-size", "size vs latency Pareto plot",
                      pareto_plot(points, devices, colors, size, "model file size (KiB)",
                                  "Size vs latency: dashed = Pareto front per device (down and left is better)", False)))

    parts.append("<h2>Energy per inference</h2>")
    measured = [p for p in points if p.row.get("energy_mj") is not None]
    if measured:
        parts.append(_img("energy-bars", "energy per inference", energy_bars(points, colors)))
        parts.append(_table("energy", ["#", "artifact", "device", "energy mJ/inference", "mean power W"],
                            [[str(p.n), _esc(p.label), _device_cell(p.device, devices), _fmt(p.energy_mj), _fmt(p.row.get("mean_power_w"), ".2f")]
                             for p in measured], {3, 4}))
    not_measured = sorted({f"{p.device}: {(p.row.get('power') or {}).get('reason') or 'not measured'}" for p in points if p.row.get("energy_mj") is None})
    if not_measured:
        parts.append("<p id='energy-missing'>No energy figure for: " + "; ".join(_esc(s) for s in not_measured) + ".</p>")

    parts.append(memory_section(points))
    parts.append(ops_section(points, ups))
    parts.append("<h2>Delegation per artifact</h2>")
    parts.append(_table("delegation", ["artifact", "runtime", "delegated subgraphs", "delegated nodes", "non-delegated nodes",
                                       "delegated share", "non-delegated ops"], _delegation_rows(points), {2, 3, 4, 5}))

    parts.append("<h2>Every point and the recipe behind it</h2>")
    head = ["#", "artifact", "device", "runtime", "threads", "size KiB", "top-1", "p50 ms", "p90 ms", "p99 ms", "cv", "load ms",
            "peak RSS MB", "energy mJ", "ref check", "Pareto", "recipe", "accuracy gate", "run"]
    body = []
    for p in points:
        front = "/".join(t for t, s in (("acc", acc_front), ("size", size_front)) if p.n in s)
        body.append([str(p.n), f"{_esc(p.label)}<br><code>{_esc((p.sha256 or '')[:12])}</code>", _device_cell(p.device, devices),
                     _esc(p.runtime), _esc(p.threads), _fmt(size(p), ".1f"), _fmt(acc(p), ".2f") + ("%" if acc(p) is not None else ""),
                     _fmt(p.p50_ms), _fmt(p.p90_ms), _fmt(p.p99_ms), _fmt(p.cv, ".3f"), _fmt(p.load_ms, ".1f"),
                     _fmt(p.peak_rss_mb, ".0f"), _fmt(p.row.get("energy_mj")),
                     {True: "ok", False: "<b>FAILED</b>", None: "—"}[p.row.get("reference_passed")], front,
                     _esc(p.recipe_text) or "— (not recorded)",
                     _esc(gate_text(((p.row.get("manifest") or {}).get("compression") or {}).get("gate"))), _esc(p.run_id)])
    numeric = {0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
    if any((p.row.get("manifest") or {}).get("task") for p in points):  # detectors/segmenters: their metric by latency
        from kit.tasks.spec import metric_text

        head.insert(7, "task metric")
        for p, cells in zip(points, body):
            cells.insert(7, _esc(metric_text((p.row.get("manifest") or {}).get("task"))))
        numeric = {i + (i >= 7) for i in numeric}
    parts.append(_table("measurements", head, body, numeric))
    recipes = {p.row["recipe_name"] or p.recipe_text: p.row["recipe"] for p in points if isinstance(p.row.get("recipe"), dict)}
    if recipes:
        parts.append("<h2>Recipes</h2>" + "".join(
            f"<details><summary>{_esc(name)}</summary><pre>{_esc(json.dumps(r, indent=2, sort_keys=True))}</pre></details>"
            for name, r in recipes.items()))
    parts.append("</body></html>")
    return "".join(parts)


def write_report(rows: list[dict], out_dir: str | Path, title: str = "EdgeKit report", *, confidence: float = 0.99) -> Path:
    """Write <out_dir>/report.html atomically from store.measurements() rows; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = render(rows, title, confidence=confidence)
    path = out_dir / "report.html"
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def write_store_report(store, out_dir: str | Path, *, run_id: int | None = None, title: str | None = None) -> Path:
    """Report one run, or else the newest measurement of every artifact on every device and thread count."""
    if run_id is not None:
        store.run(run_id)
        rows = store.measurements(run_id)
    else:
        rows = store.latest_measurements()
    rows = [{**r, "profile_ops": store.profile(r["id"])} for r in rows]
    return write_report(rows, out_dir, title or (f"EdgeKit report: run {run_id}" if run_id is not None else "EdgeKit report"))
