"""Export measurement rows as JSON (everything, JSON columns parsed) or CSV (one flat row each)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from kit.errors import EdgeKitError
from kit.results.store import decode

FORMATS = ("json", "csv")

CSV_COLUMNS = ["id", "run_id", "created", "device", "emulated", "variant", "model_name", "recipe_name", "runtime", "format",
               "sha256", "bundle_id", "size_bytes", "threads", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "cv",
               "min_ms", "max_ms", "load_ms", "first_inference_ms", "peak_rss_mb", "reference_passed", "accuracy",
               "mean_power_w", "energy_mj", "throttled"]


def to_records(rows: list[dict], *, samples: bool = False) -> list[dict]:
    """Decoded rows for JSON; the raw agent document is left out (and the samples unless asked for)."""
    out = []
    for r in rows:
        d = decode(r)
        d.pop("raw", None)
        if not samples:
            d.pop("samples", None)
        out.append(d)
    return out


def export_text(rows: list[dict], fmt: str, *, samples: bool = False) -> str:
    if fmt == "json":
        return json.dumps(to_records(rows, samples=samples), indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        cols = CSV_COLUMNS + (["samples_ms"] if samples else [])
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for d in to_records(rows, samples=samples):
            if samples:
                d["samples_ms"] = " ".join(f"{s:g}" for s in d.get("samples") or [])
            w.writerow(d)
        return buf.getvalue()
    raise EdgeKitError(f"export format {fmt!r}: choose one of {', '.join(FORMATS)}")


def export(store, fmt: str, out: str | Path | None = None, *, run_id: int | None = None, device: str | None = None,
           samples: bool = False) -> str:
    """Export the store's measurements (optionally one run / one device); write `out` atomically if given."""
    if run_id is not None:
        store.run(run_id)
    text = export_text(store.measurements(run_id, device=device), fmt, samples=samples)
    if out is not None:
        out = Path(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".part")
            tmp.write_text(text)
            tmp.replace(out)
        except OSError as e:
            raise EdgeKitError(f"export file {out}: cannot write ({e.strerror}); choose another path with --out") from e
    return text


RUN_COLUMNS = ["id", "started", "finished", "kind", "note", "measurements", "devices"]


def runs_text(runs: list[dict], fmt: str) -> str:
    """store.runs() as JSON or CSV."""
    if fmt == "json":
        out = []
        for r in runs:
            r = dict(r)
            r["options"] = json.loads(r.pop("options_json") or "null")
            out.append(r)
        return json.dumps(out, indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RUN_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(runs)
        return buf.getvalue()
    raise EdgeKitError(f"format {fmt!r}: choose one of table, {', '.join(FORMATS)}")
