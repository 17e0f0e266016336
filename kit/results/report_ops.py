"""The report's memory split and per-operator sections: a top-operators chart per profiled
artifact, and the int8-vs-twin operator comparison where both were profiled."""

from __future__ import annotations

import html

from kit.profiles import compare_ops
from kit.results.plots import png_base64, top_ops_chart


def _fmt(v, spec=".1f") -> str:
    return "—" if v is None else format(v, spec)


def memory_section(points) -> str:
    head = ["#", "artifact", "device", "runtime import MB", "model load MB", "inference peak MB", "planned MB",
            "peak RSS MB", "load ms", "first inference ms"]
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in (
            p.n, html.escape(p.label), html.escape(p.device), _fmt(p.row.get("runtime_import_mb")), _fmt(p.row.get("model_load_mb")),
            _fmt(p.row.get("inference_peak_mb")), _fmt(p.row.get("planned_mb"), ".2f"), _fmt(p.peak_rss_mb),
            _fmt(p.load_ms), _fmt(p.row.get("first_inference_ms"), ".2f"))) + "</tr>" for p in points)
    return ("<h2>Memory split</h2><p>Runtime import: what loading the runtime adds to the process; model load: RSS after "
            "loading the model minus before reading it; inference peak: the high-water mark during the runs; planned: the "
            "runtime's memory-planned buffers (ExecuTorch native runner).</p>"
            f"<table id='memory'><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>")


def ops_section(points, ups) -> str:
    profiled = [p for p in points if p.row.get("profile_ops") and not p.row["profile_ops"].get("error")]
    parts = ["<h2>Where the time goes (per-operator profiles)</h2>"]
    if not profiled:
        return parts[0] + "<p id='ops-missing'>No profiled measurement: bench with --profile.</p>"
    for p in profiled:
        prof = p.row["profile_ops"]
        parts.append(f"<img id='top-ops-{p.n}' class='top-ops' alt='top operators of #{p.n}' "
                     f"src='data:image/png;base64,{png_base64(top_ops_chart(prof, f'#{p.n} {p.label} on {p.device}'))}'>")
        if prof.get("note"):
            parts.append(f"<p class='ops-note'>#{p.n}: {html.escape(prof['note'])}</p>")
    for s in ups:
        a, b = s.twin.row.get("profile_ops"), s.compressed.row.get("profile_ops")
        if not a or not b or a.get("error") or b.get("error"):
            continue
        c = compare_ops(a, b)
        rows = "".join(f"<tr><td>{html.escape(r['kind'])}</td><td>{_fmt(r['a_ms'], '.4f')}</td><td>{_fmt(r['b_ms'], '.4f')}</td>"
                       f"<td>{r['delta_ms']:+.4f}</td></tr>" for r in c["rows"])
        parts.append(f"<h3>#{s.compressed.n} {html.escape(s.compressed.label)} vs its twin #{s.twin.n}</h3>"
                     f"<p>{html.escape(c['summary'])}</p><table class='ops-compare'><tr><th>type</th><th>twin ms</th>"
                     f"<th>compressed ms</th><th>change ms</th></tr>{rows}</table>")
    return "".join(parts)
