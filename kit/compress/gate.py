"""The accuracy gate: a compressed model is judged against the original on one evaluation set, by
metrics whose units are always said; over budget it is reported and refused for packaging unless
the user overrides (--override-budget).

The budget (kit.recipes.schema.Budget, or any object with the same attributes) may hold:
- `top1_drop`: points of top-1 lost (needs labels);
- `agreement`: a floor on the share (0..1) of inputs whose top-1 equals the original's;
- `sqnr_db`: a floor on the output SQNR against the original, dB;
- `metric` + `metric_drop`: a user metric `pkg.module:fn(outputs, labels) -> float` (higher is
  better) that replaces top-1; the budget is its largest drop, in the metric's own units.

Which apply: with labels the top-1 drop, and the agreement/SQNR floors when given; without labels
the agreement/SQNR floors. A `top1_drop` alone on unlabelled data is read as an agreement floor of
(100 - drop)% and the basis says so (`agreement (from top1_drop: no labels)`): units never implicit.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass, field

from kit.errors import EdgeKitError

FROM_TOP1 = "agreement (from top1_drop: no labels)"
_FLAGS = {"top1_drop": "--budget-top1-drop", "agreement": "--budget-agreement", "sqnr_db": "--budget-sqnr-db",
          "metric_drop": "--budget-metric-drop"}


@dataclass
class Check:
    """One metric against its limit. `bound` "max": a budget the value must not exceed; "min": a floor."""
    metric: str  # top1_drop | agreement | sqnr_db | metric_drop
    unit: str  # "points" | "share" (0..1) | "dB" | "metric units"
    value: float
    limit: float
    bound: str
    passed: bool
    field: str  # the budget field the limit comes from (budget.top1_drop for a floor read from it)
    text: str  # the sentence: metric, unit, measured value, limit


@dataclass
class GateResult:
    passed: bool
    # "top1" (labelled), "agreement" (a floor on top-1 agreement with the original), FROM_TOP1,
    # "sqnr_db" (only an SQNR floor) or "metric:pkg.module:fn"
    basis: str
    baseline: float  # the headline check's original value (top-1 / 1.0 for agreement / the metric's)
    result: float
    drop_points: float  # top-1 points (top1), disagreement points (agreement bases), metric units (metric)
    budget_points: float | None  # in the same units; None: no accuracy budget
    labelled: bool = True
    samples: int | None = None
    agreement: float | None = None  # share of inputs whose top-1 is unchanged (0..1)
    sqnr_db: float | None = None  # output SQNR vs the original, dB
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-safe (an SQNR of inf for identical outputs is the string "inf"), the message included."""
        return _safe({**asdict(self), "message": self.message, "failed": [c.metric for c in self.checks if not c.passed]})

    @property
    def message(self) -> str:
        if not self.checks:
            parts = [f"top-1 drop {self.drop_points:.2f} points" if self.basis == "top1" else "", _agreement_text(self)]
            return f"no accuracy budget set ({'; '.join(p for p in parts if p)})"
        failed = [c for c in self.checks if not c.passed]
        if not failed:
            return "; ".join(c.text for c in self.checks)
        if any(c.metric == "agreement" and c.field == "budget.top1_drop" for c in failed):
            todo = ("set budget.agreement (--budget-agreement, e.g. 0.90), give labelled data, "
                    "or pass --override-budget")
        else:
            fields = " and ".join(f"{c.field} ({_FLAGS[c.field.split('.')[-1]]})" for c in failed)
            todo = f"loosen {fields} or pass --override-budget"
        return "; ".join(c.text for c in failed) + f"; {todo}"

    @property
    def short(self) -> str:
        """The failed checks in a few words each (a search table's note)."""
        return "; ".join(_SHORT[c.metric](c) for c in self.checks if not c.passed)


_SHORT = {"top1_drop": lambda c: f"top-1 drop {c.value:.2f} pt > {c.limit:g} pt",
          "agreement": lambda c: f"agreement {100 * c.value:.1f}% < {100 * c.limit:.1f}%"
                                 + (" (from top1_drop: no labels)" if c.field == "budget.top1_drop" else ""),
          "sqnr_db": lambda c: f"SQNR {c.value:.1f} dB < {c.limit:g} dB",
          "metric_drop": lambda c: f"metric drop {c.value:.4g} > {c.limit:g}"}


def _safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_safe(v) for v in obj]
    return obj


def _agreement_text(g: GateResult) -> str:
    if g.agreement is None:
        return ""
    n = f"{g.samples} " if g.samples is not None else ""
    return f"agreement with the original {100 * g.agreement:.2f}% of {n}inputs"


def check(baseline: float, result: float, budget_points: float | None, basis: str = "top1") -> GateResult:
    """The top-1 gate alone: `baseline`/`result` are fractions (0.97); drop and budget in points."""
    if budget_points is not None and budget_points < 0:
        raise EdgeKitError(f"budget top1_drop={budget_points}: must be >= 0 percentage points")
    drop = round(100.0 * (baseline - result), 4)
    passed = budget_points is None or drop <= budget_points + 1e-9
    checks = [] if budget_points is None else [Check(
        "top1_drop", "points", drop, budget_points, "max", passed, "budget.top1_drop",
        f"{'top-1' if basis == 'top1' else basis} drop {drop:.2f} points ({100 * baseline:.2f}% -> {100 * result:.2f}%) is "
        f"{'within' if passed else 'over'} the budget of {budget_points:.2f} points")]
    return GateResult(passed, basis, baseline, result, drop, budget_points, labelled=basis == "top1", checks=checks)


def _limits(budget) -> dict:
    """The budget's accuracy fields; a bare number (or None) is the legacy top-1 budget in points."""
    if budget is None or isinstance(budget, (int, float)):
        return {"top1_drop": budget}
    return {k: getattr(budget, k, None) for k in ("top1_drop", "agreement", "sqnr_db", "metric", "metric_drop")}


def _floor(metric: str, value: float, limit: float, text: str, field_name: str, unit: str) -> Check:
    ok = value >= limit - 1e-9
    return Check(metric, unit, value, limit, "min", ok, field_name, text.format(verdict="meets" if ok else "is under"))


def judge(baseline: dict, measured: dict, budget, baseline_top1: float | None = None, *,
          samples: int | None = None) -> GateResult:
    """The gate for one evaluation (kit.compress.chain's step rows, kit.evaluate.evaluate_artifact's
    dict, each with `agreement` {top1_match, sqnr_db}, `top1` when labelled and `metric` {name,
    value} when a user metric ran). `budget`: a Budget (or a bare top-1 budget in points, the old
    spelling); `baseline_top1` overrides the original's top-1; `samples`: how many inputs."""
    lim = _limits(budget)
    agree = measured["agreement"]
    share, sqnr = float(agree["top1_match"]), float(agree["sqnr_db"])
    labelled = "top1" in baseline and "top1" in measured
    n = f"{samples} " if samples is not None else ""
    where = "labelled data" if labelled else "no labels"
    checks: list[Check] = []
    if lim.get("metric"):
        spec = lim["metric"]
        if "metric" not in baseline or "metric" not in measured:
            raise EdgeKitError(f"budget.metric {spec}: the evaluation did not run it (build with the same budget)")
        b, r = float(baseline["metric"]["value"]), float(measured["metric"]["value"])
        drop, budget_drop = round(b - r, 6), lim.get("metric_drop")
        if budget_drop is None:
            raise EdgeKitError(f"budget.metric {spec} needs budget.metric_drop (--budget-metric-drop): the largest "
                               f"drop allowed, in the metric's own units")
        ok = drop <= budget_drop + 1e-9
        checks.append(Check("metric_drop", "metric units", drop, budget_drop, "max", ok, "budget.metric_drop",
                            f"metric {spec} {b:.4g} -> {r:.4g} (drop {drop:.4g} in the metric's own units, higher is "
                            f"better; {n}inputs) is {'within' if ok else 'over'} the budget of {budget_drop:g}"))
        head = ("metric:" + spec, b, r, drop, budget_drop)
    elif labelled and lim.get("top1_drop") is not None:
        top = check(baseline["top1"] if baseline_top1 is None else baseline_top1, measured["top1"], lim["top1_drop"])
        c = top.checks[0]
        c.text = c.text.replace(") is", f" on {n}labelled inputs) is", 1)
        checks.append(c)
        head = ("top1", top.baseline, top.result, top.drop_points, top.budget_points)
    else:
        head = None
    floor, floor_field = lim.get("agreement"), "budget.agreement"
    if (floor is None and lim.get("sqnr_db") is None and not labelled and not lim.get("metric")
            and lim.get("top1_drop") is not None):  # top1_drop alone, no labels: an agreement floor, said so
        floor, floor_field = round(1.0 - lim["top1_drop"] / 100.0, 6), "budget.top1_drop"
    if floor is not None:
        source = ("" if floor_field == "budget.agreement" else
                  f", so budget.top1_drop={lim['top1_drop']:g} points is read as an agreement floor of "
                  f"100 - {lim['top1_drop']:g} = {100 * floor:.2f}%")
        checks.append(_floor("agreement", share, floor,
                             f"agreement with the original {100 * share:.2f}% {{verdict}} the floor of {100 * floor:.2f}% "
                             f"(share of {n}inputs whose top-1 is unchanged; {where}{source})", floor_field, "share"))
    if lim.get("sqnr_db") is not None:
        checks.append(_floor("sqnr_db", sqnr, float(lim["sqnr_db"]),
                             f"output SQNR vs the original {sqnr:.2f} dB {{verdict}} the floor of {lim['sqnr_db']:.2f} dB "
                             f"(signal-to-noise of the outputs over {n}inputs; {where})", "budget.sqnr_db", "dB"))
    if head is None and labelled and floor is None and lim.get("sqnr_db") is None:  # no budget: report the drop
        top = check(baseline["top1"] if baseline_top1 is None else baseline_top1, measured["top1"], None)
        head = ("top1", top.baseline, top.result, top.drop_points, None)
    elif head is None:
        basis = ("agreement" if floor_field == "budget.agreement" else FROM_TOP1) if floor is not None else (
            "sqnr_db" if lim.get("sqnr_db") is not None else "agreement")
        implied = None if floor is None else round(100.0 * (1.0 - floor), 4)
        head = (basis, 1.0, share, round(100.0 * (1.0 - share), 4), implied)
    passed = all(c.passed for c in checks)
    return GateResult(passed, head[0], head[1], head[2], head[3], head[4], labelled=labelled, samples=samples,
                      agreement=share, sqnr_db=sqnr, checks=checks)


def refuse_if_over(gate: GateResult, override: bool, what: str = "the compressed model") -> None:
    """Raise unless the gate passed or the user overrides (--override-budget). The message names
    each failed metric, its unit, the measured value, the limit and what to do."""
    if not gate.passed and not override:
        raise EdgeKitError(f"{what} refused: {gate.message}")


# --- user metrics ----------------------------------------------------------------------------

def load_metric(spec: str):
    """`pkg.module:fn` -> the callable fn(outputs: np.ndarray, labels: np.ndarray | None) -> float
    (higher is better); a bad spec is one line naming it."""
    where = f"metric {spec!r} (--metric / budget.metric)"
    module, sep, name = (spec or "").partition(":")
    if not sep or not module or not name:
        raise EdgeKitError(f"{where}: give it as pkg.module:function, e.g. mymetrics:top5")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - an import that fails for any reason is the user's module
        raise EdgeKitError(f"{where}: cannot import module {module!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           "make it importable (PYTHONPATH) or fix the name") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise EdgeKitError(f"{where}: module {module!r} has no {name!r}; name a function defined there")
    if not callable(fn):
        raise EdgeKitError(f"{where}: {name!r} in {module!r} is a {type(fn).__name__}, not a function; "
                           "give fn(outputs, labels) -> float")
    return fn


def run_metric(spec: str, outputs, labels, reference=None, task=None) -> float:
    """Call the user metric on one model's outputs; its failure or a non-number is one line naming it.
    `reference` (the fp32 model's outputs, for metrics against it when there are no labels) and
    `task` (kit.tasks.spec.Task) are passed only to a metric whose signature takes them."""
    fn = load_metric(spec)
    try:
        value = fn(outputs, labels, **_extra_args(fn, reference=reference, task=task))
        value = float(value)
    except Exception as e:  # noqa: BLE001 - the user's code: whatever it raises becomes one line
        msg = str(e).splitlines()[0] if str(e) else ""
        raise EdgeKitError(f"metric {spec!r} (--metric / budget.metric) failed on outputs of shape {tuple(outputs.shape)} "
                           f"(labels: {'none' if labels is None else len(labels)}): {type(e).__name__}: {msg}; "
                           "fix it to return a float, higher is better") from None
    if not math.isfinite(value):
        raise EdgeKitError(f"metric {spec!r} (--metric / budget.metric) returned {value}; it must return a finite float")
    return value


def _extra_args(fn, **candidates) -> dict:
    """The keyword arguments among `candidates` (not None) that `fn` accepts by name or **kwargs."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    anything = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in candidates.items() if v is not None and (anything or k in params)}
