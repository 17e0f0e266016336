"""HTML report: one self-contained page (plots embedded as PNG data URIs) from measurement rows.

Sections: warnings (emulated devices, throttling, failed reference checks, noisy runs, compressed
artifacts that are not faster than their uncompressed twin), per-device latency bars (p50 with a
p90 tick and a whisker to p99), accuracy-vs-latency and size-vs-latency Pareto plots, energy per
inference where measured, the delegation summary per artifact, and a table that ties every
numbered point in the plots to its artifact, device and recipe.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit.results.compare import latency_verdict, variant_label
from kit.results.store import decode

_UNCOMPRESSED = {"fp32", "float", "float32", "baseline", "uncompressed", "dense", "original"}
_COMPRESSED = {"int8", "int4", "uint8", "q8", "q4", "quant", "quantized", "qdq", "qat", "pruned", "prune", "sparse",
               "lowrank", "low-rank", "cluster", "clustered", "fp16", "bf16", "distilled", "compressed"}
_NEW_MODEL_STEPS = {"distill", "train"}
NOISY_CV = 0.2  # coefficient of variation above which a latency figure is flagged as noisy


def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def _fmt(v, spec=".3f", none="—") -> str:
    return none if v is None else format(v, spec)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _figure(width: float, height: float):
    # matplotlib.figure.Figure directly: no pyplot state machine, nothing to close.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _colors(devices: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    return {d: palette[i % len(palette)] for i, d in enumerate(devices)}


# --- the data behind the page ------------------------------------------------------------
@dataclass
class Point:
    """One measurement, numbered: plots label points '#n', the table explains each number."""
    n: int
    row: dict

    def __getattr__(self, key):
        try:
            return self.row[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def label(self) -> str:
        return variant_label(self.row)

    @property
    def accuracy_value(self):
        return self.row.get("accuracy") if self.row.get("accuracy") is not None else self.row.get("artifact_accuracy")

    @property
    def recipe_text(self) -> str:
        recipe = self.row.get("recipe")
        if not isinstance(recipe, dict):
            return ""
        steps = " → ".join(_step_text(s) for s in recipe.get("compress") or []) or "no compression"
        return f'{recipe.get("name") or "recipe"}: {steps}'


def _step_text(step: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in step.items() if k != "method")
    return f'{step.get("method", "?")}({params})'


def compression_state(row: dict) -> bool | None:
    """True: compressed, False: uncompressed, None: cannot tell. Recipe first, then the variant name."""
    recipe = row.get("recipe")
    if isinstance(recipe, dict) and "compress" in recipe:
        # Distillation makes a new model (its own name), not a compressed twin of the same model.
        return any(step.get("method") not in _NEW_MODEL_STEPS for step in recipe["compress"] or [])
    tokens = set(re.split(r"[-_.\s/]+", (row.get("variant") or "").lower()))
    if tokens & _COMPRESSED:
        return True
    if tokens & _UNCOMPRESSED:
        return False
    return None


@dataclass
class Speedup:
    compressed: Point
    twin: Point
    speedup: float  # twin p50 / compressed p50: above 1 means the compressed artifact is faster
    verdict: str  # latency_verdict from twin to compressed: "faster" means compressed is faster

    @property
    def honest_line(self) -> str:
        c, t = self.compressed, self.twin
        why = {"slower": "slower beyond noise", "within noise": "no faster beyond noise",
               "too few samples": "too few samples to tell"}.get(self.verdict, self.verdict)
        return f"{c.label} is {self.speedup:.2f}x {t.label} on {c.device} ({why}; p50 {c.p50_ms:.3f} ms vs {t.p50_ms:.3f} ms)"


def speedups(points: list[Point], confidence: float = 0.99) -> list[Speedup]:
    """Pair each compressed artifact with its uncompressed twin: same model name, runtime, device, threads."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault((p.model_name, p.runtime, p.device, p.threads), []).append(p)
    out = []
    for members in groups.values():
        twins = [p for p in members if compression_state(p.row) is False]
        if not twins:
            continue
        twin = max(twins, key=lambda p: p.row["id"])
        for p in members:
            if compression_state(p.row) is True and p.p50_ms and twin.p50_ms:
                v = latency_verdict(twin.row.get("samples") or [], p.row.get("samples") or [], confidence=confidence)
                out.append(Speedup(p, twin, twin.p50_ms / p.p50_ms, v.verdict))
    return out


def twin_speedups(store, measurement_id: int, confidence: float = 0.99) -> list[Speedup]:
    """The twin comparisons one new measurement takes part in: the benched artifact against its
    uncompressed twin, or (when it is the uncompressed one) every compressed artifact of the same
    model, runtime, device and thread count, each by its newest measurement."""
    new = store.measurement(measurement_id)
    if new is None:
        return []
    # speedups() does the pairing (same model name, runtime, device, threads); keep the new row's pairs.
    points = [Point(i + 1, decode(r)) for i, r in enumerate(store.latest_measurements(device=new["device"]))]
    return [s for s in speedups(points, confidence) if measurement_id in (s.compressed.row["id"], s.twin.row["id"])]


def _pareto(points: list[Point], value, better_high: bool) -> list[Point]:
    """Points no other point beats on both latency (lower) and `value` (higher or lower)."""
    front, best = [], None
    for p in sorted((p for p in points if value(p) is not None and p.p50_ms is not None), key=lambda p: (p.p50_ms, -(value(p)) if better_high else value(p))):
        v = value(p)
        if best is None or (v > best if better_high else v < best):
            front.append(p)
            best = v
    return front


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


# --- plots -------------------------------------------------------------------------------
def latency_bars(points: list[Point], devices: dict[str, bool], colors: dict[str, str]):
    """One panel per device: p50 bar, p90 tick, whisker to p99; emulated devices hatched and titled."""
    names = list(devices)
    counts = [sum(p.device == d for p in points) for d in names]
    fig = _figure(7.5, sum(0.9 + 0.38 * c for c in counts) + 0.3)
    axes = fig.subplots(len(names), 1, squeeze=False, gridspec_kw={"height_ratios": [0.9 + 0.38 * c for c in counts]})[:, 0]
    for ax, dev in zip(axes, names):
        pts = [p for p in points if p.device == dev]
        ys = list(range(len(pts)))
        p50 = [p.p50_ms for p in pts]
        ax.barh(ys, p50, color=colors[dev], alpha=0.75, hatch="//" if devices[dev] else None, edgecolor="black", linewidth=0.5)
        ax.errorbar(p50, ys, xerr=[[0] * len(pts), [max(0.0, (p.p99_ms or v) - v) for p, v in zip(pts, p50)]],
                    fmt="none", ecolor="black", capsize=4, linewidth=1)
        ax.scatter([p.p90_ms for p in pts], ys, marker="|", color="black", s=120, zorder=3)
        ax.set_yticks(ys, [f"#{p.n} {p.label} ({p.threads}t)" for p in pts], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{dev}{'  (EMULATED: not real-device latency)' if devices[dev] else ''}", fontsize=10,
                     color="#b00" if devices[dev] else "black", loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(left=0)
    axes[-1].set_xlabel("latency (ms): bar = p50, tick = p90, whisker to p99")
    fig.tight_layout()
    return fig


def pareto_plot(points: list[Point], devices: dict[str, bool], colors: dict[str, str], value, ylabel: str, title: str,
                better_high: bool):
    fig = _figure(7.0, 4.4)
    ax = fig.subplots()
    for dev, emulated in devices.items():
        pts = [p for p in points if p.device == dev and value(p) is not None and p.p50_ms is not None]
        if not pts:
            continue
        c = colors[dev]
        ax.errorbar([p.p50_ms for p in pts], [value(p) for p in pts],
                    xerr=[[0] * len(pts), [max(0.0, (p.p99_ms or p.p50_ms) - p.p50_ms) for p in pts]],
                    fmt="o", color=c, mfc="white" if emulated else c, capsize=3, label=dev + (" (emulated)" if emulated else ""))
        front = _pareto(pts, value, better_high)
        if len(front) > 1:
            ax.step([p.p50_ms for p in front], [value(p) for p in front], where="post", color=c, alpha=0.6, linestyle="--")
        for k, p in enumerate(sorted(pts, key=lambda p: p.p50_ms)):  # staggered around the point: neighbours stay readable
            ax.annotate(f"#{p.n}", (p.p50_ms, value(p)), textcoords="offset points", xytext=((4, 4), (4, -11), (-18, 4))[k % 3],
                        fontsize=8)
    ax.set_xlabel("latency p50 (ms), whisker to p99")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def energy_bars(points: list[Point], colors: dict[str, str]):
    pts = [p for p in points if p.row.get("energy_mj") is not None]
    fig = _figure(7.0, 0.8 + 0.38 * len(pts))
    ax = fig.subplots()
    ys = list(range(len(pts)))
    ax.barh(ys, [p.energy_mj for p in pts], color=[colors[p.device] for p in pts], alpha=0.8)
    ax.set_yticks(ys, [f"#{p.n} {p.label} on {p.device}" for p in pts], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("energy per inference (mJ)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


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
    return f'<img id="{img_id}" alt="{_esc(alt)}" src="data:image/png;base64,{_png(fig)}">'


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


def render(rows: list[dict], title: str = "EdgeKit report", *, confidence: float = 0.99) -> str:
    """The report page as one HTML string."""
    points = [Point(i + 1, decode(r)) for i, r in enumerate(rows)]
    devices: dict[str, bool] = {}
    for p in points:
        devices[p.device] = devices.get(p.device, False) or bool(p.row.get("emulated") or (p.row.get("device_info") or {}).get("emulated"))
    colors = _colors(list(devices))
    ups = speedups(points, confidence)
    warns = collect_warnings(points, devices, ups)
    acc = lambda p: None if p.accuracy_value is None else 100 * p.accuracy_value  # noqa: E731
    size = lambda p: None if p.size_bytes is None else p.size_bytes / 1024  # noqa: E731
    acc_front = {p.n for d in devices for p in _pareto([q for q in points if q.device == d], acc, True)}
    size_front = {p.n for d in devices for p in _pareto([q for q in points if q.device == d], size, False)}

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

    parts.append("<h2>Delegation per artifact</h2>")
    parts.append(_table("delegation", ["artifact", "runtime", "delegated subgraphs", "delegated nodes", "non-delegated nodes",
                                       "delegated share", "non-delegated ops"], _delegation_rows(points), {2, 3, 4, 5}))

    parts.append("<h2>Every point and the recipe behind it</h2>")
    head = ["#", "artifact", "device", "runtime", "threads", "size KiB", "top-1", "p50 ms", "p90 ms", "p99 ms", "cv", "load ms",
            "peak RSS MB", "energy mJ", "ref check", "Pareto", "recipe", "run"]
    body = []
    for p in points:
        front = "/".join(t for t, s in (("acc", acc_front), ("size", size_front)) if p.n in s)
        body.append([str(p.n), f"{_esc(p.label)}<br><code>{_esc((p.sha256 or '')[:12])}</code>", _device_cell(p.device, devices),
                     _esc(p.runtime), _esc(p.threads), _fmt(size(p), ".1f"), _fmt(acc(p), ".2f") + ("%" if acc(p) is not None else ""),
                     _fmt(p.p50_ms), _fmt(p.p90_ms), _fmt(p.p99_ms), _fmt(p.cv, ".3f"), _fmt(p.load_ms, ".1f"),
                     _fmt(p.peak_rss_mb, ".0f"), _fmt(p.row.get("energy_mj")),
                     {True: "ok", False: "<b>FAILED</b>", None: "—"}[p.row.get("reference_passed")], front,
                     _esc(p.recipe_text) or "— (not recorded)", _esc(p.run_id)])
    parts.append(_table("measurements", head, body, {0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}))
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
    return write_report(rows, out_dir, title or (f"EdgeKit report: run {run_id}" if run_id is not None else "EdgeKit report"))
