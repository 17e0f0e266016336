"""Does compression pay off? Each search candidate against the best uncompressed artifact on the
same device, in the same run, with the same threads.

The uncompressed baselines are the original model packaged as fp32 .pte (ExecuTorch/XNNPACK) and
fp32 .onnx (ONNX Runtime), built through the same cache as every candidate. They are benched in
short slots before the first candidate, between every few and after the last (`measure_all`), so
their samples span the whole time the candidates are measured and drift (other load, clocks)
falls on both sides; the faster of the two is the reference. A candidate's speed-up is reference p50 / its p50,
with kit.results.compare's noise verdict on the raw samples (faster / same / slower). Host costs:
the seconds its compress + package took (from the build report, also when the bundle now comes
from the cache), capped per candidate by `capped_progress` (measured or predicted from the
progress bar's rate).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from kit.errors import EdgeKitError

BASELINE_RUNTIMES = (("executorch", "pte"), ("onnxruntime", "onnx"))
VERDICTS = {"faster": "faster", "slower": "slower", "within noise": "same", "too few samples": "too few samples"}
PREDICT_AFTER_S = 5.0  # extrapolate a progress bar's rate only after this long (the first ticks are noisy)


class HostTimeExceeded(EdgeKitError):
    """A candidate's build went (or would go) over --max-host-seconds; the search skips it."""


def capped_progress(progress, cap_s: float | None, t0: float | None = None):
    """`progress` that raises HostTimeExceeded once the build has run `cap_s` seconds, or when a
    progress bar's rate says it will (elapsed + its remaining share at its own pace > cap)."""
    if cap_s is None:
        return progress
    t0 = time.time() if t0 is None else t0
    started: dict[str, tuple[float, int]] = {}

    def wrapped(label: str, done: int, total: int) -> None:
        now = time.time()
        since, first = started.setdefault(label, (now, done))
        if now - t0 > cap_s:
            raise HostTimeExceeded(f"host time {now - t0:.0f} s > --max-host-seconds {cap_s:g} (during {label})")
        if total and done > first and now - since >= PREDICT_AFTER_S:
            predicted = (now - t0) + (now - since) / (done - first) * (total - done)
            if predicted > cap_s:
                raise HostTimeExceeded(f"predicted host time ~{predicted:.0f} s > --max-host-seconds {cap_s:g} "
                                       f"({label} at {done}/{total} after {now - t0:.0f} s)")
        if progress is not None:
            progress(label, done, total)

    return wrapped


def baseline_recipes(recipe) -> list:
    """The uncompressed twins of `recipe`: same input, threads and bench settings, no compression,
    one per baseline runtime (fp32 .pte and fp32 .onnx)."""
    from kit.recipes.schema import Recipe

    doc = recipe.model_dump()
    out = []
    for runtime, fmt in BASELINE_RUNTIMES:
        out.append(Recipe.model_validate({**doc, "name": f"uncompressed-{fmt}", "runtime": runtime, "format": fmt,
                                          "compress": [], "description": f"uncompressed fp32 {runtime}/{fmt}",
                                          "smoke": []}))
    return out


@dataclass
class BaselineSamples:
    """Samples of one baseline bundle at one thread count, gathered slot by slot."""
    bundle: object
    samples: list[float] = field(default_factory=list)
    reference_passed: bool | None = None
    slots: int = 0

    @property
    def p50_ms(self) -> float | None:
        import numpy as np

        return float(np.median(self.samples)) if self.samples else None


def slot_runs(runs: int, n_candidates: int) -> int:
    """Runs per baseline slot: about `runs` samples over all slots, at least the noise test's minimum."""
    from kit.results.compare import MIN_SAMPLES

    return max(MIN_SAMPLES, math.ceil(runs / (n_candidates + 1)))


def bench_slot(device, baselines: list[BaselineSamples], options, reverse: bool = False) -> None:
    """One short bench of every baseline (alternating order slot to slot), samples appended."""
    from kit.devices.bench import bench

    for b in (reversed(baselines) if reverse else baselines):
        m = bench(device, b.bundle, options)
        b.samples.extend(float(s) for s in (m.raw.get("samples_ms") or []) if s)
        b.reference_passed = bool(m.reference_passed) if b.reference_passed is None else (
            b.reference_passed and bool(m.reference_passed))
        b.slots += 1


def verdict(reference_samples: list[float], samples: list[float]) -> tuple[float | None, str, list | None]:
    """(speed-up = reference p50 / candidate p50, faster|same|slower|too few samples, 99% CI of the speed-up)."""
    from kit.results.compare import latency_verdict

    v = latency_verdict(reference_samples, samples)
    speedup = None if not v.ratio else 1.0 / v.ratio
    ci = None if v.ci_low is None or v.ci_high is None else [round(1.0 / v.ci_high, 4), round(1.0 / v.ci_low, 4)]
    return speedup, VERDICTS.get(v.verdict, v.verdict), ci


def judge_pays_off(c, ref) -> str:
    """Fill the candidate's pays-off fields against `ref` (the best baseline, a Candidate);
    the reason it does not pay off ("" when it does, or when it is uncompressed itself)."""
    c.reference = ref.recipe
    c.reference_p50_ms = ref.p50_ms
    if c.p50_ms is None or ref.p50_ms is None:
        return ""
    _, c.verdict, c.speedup_ci = verdict(ref.samples, c.samples)
    c.speedup = ref.p50_ms / c.p50_ms  # of the figures shown (as kit.results.twins); the verdict is the samples'
    if c.agreement is not None and ref.agreement is not None:
        c.agreement_lost = ref.agreement - c.agreement
    if c.size_bytes and ref.size_bytes:
        c.size_ratio = c.size_bytes / ref.size_bytes
    if c.uncompressed or c.verdict == "faster":
        return ""
    if c.speedup is None:
        return f"does not pay off: no latency samples to compare with {ref.recipe}"
    how = {"same": "within noise", "slower": "slower beyond noise"}.get(c.verdict, c.verdict)
    return f"does not pay off: {c.speedup:.2f}x {ref.recipe} ({how})"


def host_note(c) -> str:
    """'cached (built in 312 s)', 'built in 45 s', or ''."""
    if c.host_seconds is None:
        return ""
    return f"cached (built in {c.host_seconds:.0f} s)" if c.built_from_cache else f"built in {c.host_seconds:.0f} s"


def _bench_options(recipe, threads: int, runs: int | None = None) -> BenchOptions:
    from kit.devices.bench import BenchOptions

    return BenchOptions(runs=runs or recipe.bench.runs, warmup=recipe.bench.warmup, threads=threads, power=True)


def measure_all(result, recipes: dict, device, store, progress, step) -> None:
    """Per thread count: baselines in short slots before the first candidate, between every few and
    after the last (at most ~4 slots),
    candidates through kit.pipeline.measure (reused from the store when known). Fills the
    candidates' and baselines' latency figures in `result` (a kit.search.recipes.SearchResult)."""
    from kit.package.bundle import Bundle
    from kit.pipeline.measure import measure
    from kit.progress import report
    import numpy as np

    from kit.results.store import decode

    todo = [c for c in result.candidates if c.bundle_path and not c.skipped and c.error is None]
    n_done = 0
    for t in sorted({c.threads for c in [*todo, *result.baselines]}):
        group = [c for c in todo if c.threads == t]
        slots = [BaselineSamples(Bundle.load(b.bundle_path)) for b in result.baselines
                 if b.threads == t and b.bundle_path and not b.skipped and b.error is None]
        base_rows = [b for b in result.baselines if b.threads == t and b.bundle_path and not b.skipped and b.error is None]
        opts = None
        if slots:
            r0 = recipes[base_rows[0].recipe]
            every = max(2, math.ceil(len(group) / 3))  # a slot after every `every` candidates and after the last
            opts = _bench_options(r0, t, slot_runs(r0.bench.runs, math.ceil(len(group) / every)))
            if hasattr(device, "ensure_agent"):
                device.ensure_agent(progress)
        try:
            if slots:
                step(f"baselines at {t} thread(s): {', '.join(b.recipe for b in base_rows)}")
                bench_slot(device, slots, opts)
            for k, c in enumerate(group):
                recipe = recipes[c.recipe]
                try:
                    out = measure(device, Bundle.load(c.bundle_path), store, run_id=result.run_id, reuse=True,
                                  options=_bench_options(recipe, t), variant=f"recipe:{recipe.name}",
                                  accuracy=c.accuracy, recipe=recipe, progress=progress, step=step)
                    c.reused, c.measurement_id, c.side_by_side = out.reused, out.measurement_id, not out.reused
                    c.p50_ms, c.p99_ms, c.reference_passed, c.energy_mj = (out.p50_ms, out.p99_ms, out.reference_passed,
                                                                          out.energy_mj)
                    c.samples = list(decode(store.measurement(out.measurement_id) or {}).get("samples") or [])
                    result.reused += out.reused
                    result.measured += not out.reused
                except EdgeKitError as e:
                    c.error = str(e)
                if slots and (k == len(group) - 1 or (k + 1) % every == 0):
                    bench_slot(device, slots, opts, reverse=k % 2 == 0)
                n_done += 1
                report(progress, "search: measure", n_done, len(todo))
        except EdgeKitError as e:
            for b in base_rows:
                b.error = f"baseline bench failed: {e}"
            slots = []
        for b, s in zip(base_rows, slots):
            b.samples, b.p50_ms, b.reference_passed = s.samples, s.p50_ms, s.reference_passed
            b.p99_ms = float(np.percentile(s.samples, 99)) if s.samples else None
