"""The report's plots (matplotlib Figures, no pyplot state): per-device latency bars, latency vs
accuracy/size with the Pareto front per device, energy per inference."""

from __future__ import annotations

import base64
import io

from kit.results.pareto import front_of
from kit.results.twins import Point


def png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _figure(width: float, height: float):
    # matplotlib.figure.Figure directly: no pyplot state machine, nothing to close.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def device_colors(devices: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    return {d: palette[i % len(palette)] for i, d in enumerate(devices)}


def latency_front(points: list[Point], value, better_high: bool) -> list[Point]:
    """Points no other point beats on both latency (lower) and `value` (higher or lower), by latency."""
    objectives = [("p50_ms", "min"), ("value", "max" if better_high else "min")]
    front = front_of(points, objectives, lambda p, key: p.p50_ms if key == "p50_ms" else value(p))
    return sorted(front, key=lambda p: p.p50_ms)


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
        front = latency_front(pts, value, better_high)
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


def top_ops_chart(profile: dict, label: str, n: int = 10):
    """Horizontal bars: the `n` operators with the most time per run (share of the run in the labels)."""
    rows = sorted((r for r in profile.get("rows", []) if r["level"] == "op"), key=lambda r: -r["total_ms"])[:n]
    fig = _figure(7, 0.35 * max(len(rows), 2) + 1)
    ax = fig.add_subplot()
    names = [(r["name"] if len(r["name"]) <= 40 else r["name"][:37] + "...") for r in rows][::-1]
    vals = [r["total_ms"] for r in rows][::-1]
    colors = ["#d62728" if r.get("quantized") else "#1f77b4" for r in rows][::-1]
    ax.barh(range(len(rows)), vals, color=colors)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    for i, r in enumerate(rows[::-1]):
        if r.get("share") is not None:
            ax.text(vals[i], i, f" {100 * r['share']:.1f}%", va="center", fontsize=7)
    ax.set_xlabel("ms per run (red: quantized)")
    ax.set_title(f"Top operators: {label} ({profile.get('format')}, {profile.get('run_ms') or 0:.3f} ms per run)", fontsize=9)
    return fig
