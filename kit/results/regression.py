"""Regression check of a run against a baseline run, for users' CI (`edgekit bench ... --baseline RUN`).

Latency regresses when the noise verdict on the recorded repetitions says "slower" (see
kit.results.compare.latency_verdict). Accuracy regresses when it drops beyond its own noise band:
a one-sided two-proportion z-test when both test-set sizes are known (artifacts.accuracy_n),
otherwise a drop larger than `accuracy_tolerance` (accuracy is measured once per artifact, so
there are no repetitions to learn its noise from). A reference check that passed in the baseline
and fails now is a regression too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from kit.errors import EdgeKitError
from kit.results.compare import compare_rows, run_key


@dataclass
class RegressionRow:
    key: str
    metric: str  # "latency" | "accuracy" | "reference check"
    baseline: float | bool | None
    current: float | bool | None
    change: float | None  # latency: ratio current/baseline; accuracy: difference (fraction)
    verdict: str
    regressed: bool
    detail: str = ""


@dataclass
class RegressionVerdict:
    run_id: int
    baseline_run_id: int
    regressed: bool
    rows: list[RegressionRow] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # measurements of the run with no baseline counterpart

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def regressions(self) -> list[RegressionRow]:
        return [r for r in self.rows if r.regressed]


def _accuracy_drop_significant(base: float, cur: float, n_base: int, n_cur: int, confidence: float) -> tuple[bool, float]:
    """One-sided two-proportion z-test: is `cur` lower than `base` beyond sampling noise? Returns (significant, p)."""
    from scipy.stats import norm

    pooled = (base * n_base + cur * n_cur) / (n_base + n_cur)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_base + 1 / n_cur))
    p = float(norm.sf((base - cur) / se))
    return p < (1 - confidence), p


def check_against_baseline(store, run_id: int, baseline_run_id: int, *, confidence: float = 0.99,
                           accuracy_tolerance: float = 0.005) -> RegressionVerdict:
    """Compare every measurement of `run_id` with the same variant/device/threads in `baseline_run_id`."""
    store.run(run_id)
    store.run(baseline_run_id)
    base_rows, cur_rows = store.measurements(baseline_run_id), store.measurements(run_id)
    pairs, _, unmatched = compare_rows(base_rows, cur_rows, run_key, confidence=confidence, store=store)
    if not pairs:
        raise EdgeKitError(f"run {run_id} and baseline run {baseline_run_id} share no variant measured on the same device "
                           "with the same threads; choose a baseline run of the same artifacts and devices")
    rows: list[RegressionRow] = []
    for p in pairs:
        v = p.latency
        ci = (f"{v.confidence:.0%} CI of the median ratio {v.ci_low:.3f}-{v.ci_high:.3f}, Mann-Whitney p={v.p_value:.2g}; "
              f"basis: {v.basis}") if v.ci_low is not None else f"{v.n_a} vs {v.n_b} samples"
        rows.append(RegressionRow(p.key, "latency", p.a["p50_ms"], p.b["p50_ms"], v.ratio, v.verdict, v.verdict == "slower", ci))
        acc_b, acc_c = p.a["accuracy"], p.b["accuracy"]
        if acc_b is not None and acc_c is not None:
            n_b, n_c = p.a["accuracy_n"], p.b["accuracy_n"]
            if n_b and n_c:
                significant, pval = _accuracy_drop_significant(acc_b, acc_c, n_b, n_c, confidence)
                detail = f"two-proportion z-test on {n_b} vs {n_c} test samples, p={pval:.2g}"
            else:
                significant = (acc_b - acc_c) > accuracy_tolerance
                detail = f"test-set sizes unknown: tolerance {100 * accuracy_tolerance:.2g} points"
            drop = acc_c - acc_b
            verdict = "lower" if significant else ("within noise" if drop else "same")
            rows.append(RegressionRow(p.key, "accuracy", acc_b, acc_c, drop, verdict, significant, detail))
        if p.a["reference_passed"] and p.b["reference_passed"] is False:
            rows.append(RegressionRow(p.key, "reference check", True, False, None, "failed", True,
                                      "output no longer matches the bundle's reference output"))
    return RegressionVerdict(run_id, baseline_run_id, any(r.regressed for r in rows), rows, unmatched)
