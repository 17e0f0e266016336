"""Compare two runs, two devices or two artifacts side by side, with a noise verdict on latency.

Whether a latency change is real is decided from the recorded repetitions (samples_json), not a
fixed percentage: a bootstrap confidence interval of the ratio of medians (B / A) and a two-sided
Mann-Whitney U test (scipy). A change counts only when the interval excludes 1.0 *and* the test
rejects "same distribution" at the same level; otherwise it is "within noise".

Repetitions inside one run do not see what changes *between* runs (other load, clocks, caches),
so when the store holds earlier measurements of the same artifacts on the same devices, their
spread of medians widens the band: the change must also exceed z * sqrt(2) * (run-to-run standard
deviation of log p50). Without that history the verdict says it rests on within-run repetitions only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from kit.errors import EdgeKitError

MIN_SAMPLES = 5


@dataclass
class NoiseVerdict:
    verdict: str  # "faster" | "slower" | "within noise" | "too few samples"
    ratio: float | None  # median(B) / median(A): above 1 means B is slower
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_a: int
    n_b: int
    confidence: float
    run_to_run_sd: float | None = None  # sd of log(p50) across earlier runs, when the store has them
    basis: str = "within-run repetitions"

    @property
    def beyond_noise(self) -> bool:
        return self.verdict in ("faster", "slower")


def _bootstrap_median_ratio(a: np.ndarray, b: np.ndarray, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    ratios = []
    # Chunked so 5000-sample runs do not allocate resamples x n at once.
    for start in range(0, resamples, 250):
        k = min(250, resamples - start)
        ma = np.median(a[rng.integers(0, a.size, (k, a.size))], axis=1)
        mb = np.median(b[rng.integers(0, b.size, (k, b.size))], axis=1)
        ratios.append(mb / ma)
    r = np.concatenate(ratios)
    tail = (1 - confidence) / 2
    return float(np.quantile(r, tail)), float(np.quantile(r, 1 - tail))


def latency_verdict(samples_a, samples_b, *, confidence: float = 0.99, resamples: int = 2000, seed: int = 0,
                    run_to_run: tuple[float, int] | None = None) -> NoiseVerdict:
    """Is B's latency different from A's beyond the noise the repetitions show?

    `run_to_run` = (sd of log p50 across earlier runs, how many runs) widens the band when known.
    """
    from scipy.stats import mannwhitneyu, norm

    a = np.asarray([s for s in ([] if samples_a is None else samples_a) if s is not None and s > 0], dtype=np.float64)
    b = np.asarray([s for s in ([] if samples_b is None else samples_b) if s is not None and s > 0], dtype=np.float64)
    if a.size < MIN_SAMPLES or b.size < MIN_SAMPLES:
        ratio = float(np.median(b) / np.median(a)) if a.size and b.size else None
        return NoiseVerdict("too few samples", ratio, None, None, None, int(a.size), int(b.size), confidence)
    ratio = float(np.median(b) / np.median(a))
    lo, hi = _bootstrap_median_ratio(a, b, resamples, confidence, seed)
    p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    significant = p < (1 - confidence) and not (lo <= 1.0 <= hi)
    sd, basis = None, "within-run repetitions"
    if run_to_run and run_to_run[0] > 0:
        sd = run_to_run[0]
        basis = f"within-run repetitions and the spread of {run_to_run[1]} earlier runs"
        z = float(norm.ppf(1 - (1 - confidence) / 2))
        significant = significant and abs(np.log(ratio)) > z * np.sqrt(2) * sd
    verdict = ("slower" if ratio > 1 else "faster") if significant else "within noise"
    return NoiseVerdict(verdict, ratio, lo, hi, p, int(a.size), int(b.size), confidence, sd, basis)


def run_to_run_spread(history: list[list[float]]) -> tuple[float, int] | None:
    """Pooled sd of log(p50) within each group of earlier p50s of one artifact/device/threads."""
    dev2, dof, runs = 0.0, 0, 0
    for p50s in history:
        logs = np.log([v for v in p50s if v and v > 0])
        if logs.size >= 2:
            dev2 += float(((logs - logs.mean()) ** 2).sum())
            dof += logs.size - 1
            runs += logs.size
    return (float(np.sqrt(dev2 / dof)), runs) if dof >= 2 else None


def samples_of(row: dict) -> list[float]:
    try:
        return json.loads(row.get("samples_json") or "[]")
    except ValueError:
        return []


def variant_label(row: dict) -> str:
    return row.get("variant") or f'{row.get("model_name") or "model"}-{(row.get("sha256") or "")[:8]}'


def summary(row: dict) -> dict:
    """The figures of one measurement that a comparison puts side by side."""
    return {"measurement_id": row["id"], "run_id": row["run_id"], "variant": variant_label(row), "device": row["device"],
            "sha256": row["sha256"], "threads": row["threads"], "runtime": row["runtime"], "p50_ms": row["p50_ms"],
            "p90_ms": row["p90_ms"], "p99_ms": row["p99_ms"], "runs": row["runs"], "size_bytes": row["size_bytes"],
            "accuracy": row["accuracy"] if row.get("accuracy") is not None else row.get("artifact_accuracy"),
            "accuracy_n": row.get("accuracy_n"), "energy_mj": row.get("energy_mj"), "peak_rss_mb": row["peak_rss_mb"],
            "reference_passed": None if row["reference_passed"] is None else bool(row["reference_passed"]),
            **{k: row.get(k) for k in ("runtime_import_mb", "model_load_mb", "inference_peak_mb", "planned_mb",
                                       "load_ms", "first_inference_ms")}}


def _ratio(b, a):
    return None if a in (None, 0) or b is None else b / a


@dataclass
class ComparisonRow:
    key: str
    a: dict
    b: dict
    p50_ratio: float | None
    p99_ratio: float | None
    size_ratio: float | None
    energy_ratio: float | None
    accuracy_delta: float | None
    latency: NoiseVerdict


@dataclass
class Comparison:
    kind: str  # "runs" | "devices" | "artifacts"
    a: str
    b: str
    rows: list[ComparisonRow] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _history(store, row: dict, exclude: set[int]) -> list[float]:
    return [r["p50_ms"] for r in store.measurements(device=row["device"], sha256=row["sha256"], threads=row["threads"])
            if r["id"] not in exclude]


def compare_rows(a_rows: list[dict], b_rows: list[dict], key, *, confidence: float = 0.99, store=None) -> tuple[list[ComparisonRow], list[str], list[str]]:
    """Pair measurement rows by `key(row) -> str` (the newest row wins per key) and compare each pair.

    With `store`, earlier measurements of the same artifacts/devices/threads set the run-to-run band.
    """
    a_by = {key(r): r for r in a_rows}
    b_by = {key(r): r for r in b_rows}
    rows = []
    for k in a_by:
        if k not in b_by:
            continue
        ra, rb = a_by[k], b_by[k]
        sa, sb = summary(ra), summary(rb)
        acc_delta = None if sa["accuracy"] is None or sb["accuracy"] is None else sb["accuracy"] - sa["accuracy"]
        spread = None
        if store is not None:
            exclude = {ra["id"], rb["id"]}
            groups = [_history(store, ra, exclude)] + ([] if (ra["sha256"], ra["device"]) == (rb["sha256"], rb["device"])
                                                       else [_history(store, rb, exclude)])
            spread = run_to_run_spread(groups)
        rows.append(ComparisonRow(k, sa, sb, _ratio(sb["p50_ms"], sa["p50_ms"]), _ratio(sb["p99_ms"], sa["p99_ms"]),
                                  _ratio(sb["size_bytes"], sa["size_bytes"]), _ratio(sb["energy_mj"], sa["energy_mj"]), acc_delta,
                                  latency_verdict(samples_of(ra), samples_of(rb), confidence=confidence, run_to_run=spread)))
    return rows, [k for k in a_by if k not in b_by], [k for k in b_by if k not in a_by]


def run_key(r: dict) -> str:
    return f'{variant_label(r)} on {r["device"]} ({r["threads"]}t)'


def _resolve(store, ref: str) -> tuple[str, str, list[dict]]:
    """'run:N' | 'device:NAME' | 'artifact:SHA-PREFIX|BUNDLE_ID|VARIANT', or the bare value if unambiguous."""
    kind, sep, value = ref.partition(":")
    if not sep or kind not in ("run", "device", "artifact"):
        kind, value = None, ref
    found = []
    if kind in (None, "run") and value.isdigit():
        rows = store.measurements(int(value))
        if rows or kind == "run":
            store.run(int(value))  # raises a clear error for an unknown run
            found.append(("runs", f"run {value}", rows))
    if kind in (None, "device"):
        if any(d["name"] == value for d in store.devices()):
            found.append(("devices", f"device {value}", store.latest_measurements(device=value)))
        elif kind == "device":
            names = ", ".join(d["name"] for d in store.devices()) or "none"
            raise EdgeKitError(f"device {value!r}: no measurements in {store.path} (devices there: {names})")
    if kind in (None, "artifact"):
        arts = [a for a in store.artifacts()
                if a["bundle_id"] == value or a["variant"] == value or (len(value) >= 6 and a["sha256"].startswith(value))]
        if arts:
            art = max(arts, key=lambda a: a["id"])  # a variant rebuilt later: its newest artifact
            found.append(("artifacts", f'artifact {art["variant"] or art["bundle_id"]}', store.latest_measurements(sha256=art["sha256"])))
        elif kind == "artifact":
            raise EdgeKitError(f"artifact {value!r}: no artifact in {store.path} has this sha256 prefix, bundle id or variant")
    if not found and value.isdigit():
        store.run(int(value))  # an unknown run id: say which runs exist
    if not found:
        raise EdgeKitError(f"{ref!r}: not a run id, device name or artifact (sha256 prefix, bundle id, variant) in {store.path}; "
                           "see 'edgekit results list'")
    if len(found) > 1:
        raise EdgeKitError(f"{ref!r} is ambiguous ({', '.join(f[1] for f in found)}); prefix it with run:, device: or artifact:")
    return found[0]


def compare(store, a: str, b: str, *, confidence: float = 0.99) -> Comparison:
    """Compare two runs, two devices or two artifacts recorded in `store` (see _resolve for A/B syntax)."""
    kind_a, label_a, rows_a = _resolve(store, a)
    kind_b, label_b, rows_b = _resolve(store, b)
    if kind_a != kind_b:
        raise EdgeKitError(f"cannot compare {label_a} with {label_b}: compare two runs, two devices or two artifacts")
    if kind_a == "runs":
        key = run_key
    elif kind_a == "devices":
        key = lambda r: f'{variant_label(r)} {r["sha256"][:8]} ({r["threads"]}t)'  # noqa: E731
    else:
        key = lambda r: f'on {r["device"]} ({r["threads"]}t)'  # noqa: E731
    rows, only_a, only_b = compare_rows(rows_a, rows_b, key, confidence=confidence, store=store)
    if not rows:
        raise EdgeKitError(f"{label_a} and {label_b} have no measurement in common to compare "
                           f"(same {'artifact and threads' if kind_a == 'devices' else 'device and threads' if kind_a == 'artifacts' else 'variant, device and threads'})")
    return Comparison(kind_a, label_a, label_b, rows, only_a, only_b)
