"""HTML report: a self-contained page (plots embedded as PNG data URIs) from store rows."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def latency_accuracy_plot(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        if r.get("accuracy") is None:
            continue
        ax.errorbar(r["p50_ms"], 100 * r["accuracy"], xerr=[[0], [max(0.0, r["p99_ms"] - r["p50_ms"])]], fmt="o", capsize=3)
        ax.annotate(f'{r["variant"]} ({r["device"]})', (r["p50_ms"], 100 * r["accuracy"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xlabel("latency p50 (ms), bar to p99")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("Latency vs accuracy per variant")
    ax.grid(alpha=0.3)
    return fig


def write_report(rows: list[dict], out_dir: str | Path, title: str = "EdgeKit report") -> Path:
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = latency_accuracy_plot(rows)
    img = _png(fig)
    plt.close(fig)
    head = ["variant", "device", "runtime", "size (KiB)", "accuracy", "p50 ms", "p90 ms", "p99 ms", "load ms", "peak RSS MB"]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["variant"], r["device"], r["runtime"], f'{r["size_bytes"] / 1024:.0f}',
            "" if r.get("accuracy") is None else f'{100 * r["accuracy"]:.2f}%', f'{r["p50_ms"]:.3f}', f'{r["p90_ms"]:.3f}',
            f'{r["p99_ms"]:.3f}', f'{r["load_ms"]:.1f}', f'{r["peak_rss_mb"]:.0f}')) + "</tr>"
        for r in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style>
</head><body><h1>{html.escape(title)}</h1>
<h2>Measurements</h2><table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>
<h2>Latency vs accuracy</h2><img alt="latency vs accuracy" src="data:image/png;base64,{img}">
</body></html>"""
    path = out_dir / "report.html"
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(page)
    tmp.replace(path)
    return path
