"""The accuracy gate: a compressed model may lose at most `budget` top-1 points against the
original; over budget it is reported and refused for packaging unless the user overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kit.errors import EdgeKitError


@dataclass
class GateResult:
    passed: bool
    basis: str  # "top1" (labelled data) or "agreement" (unlabelled: top-1 disagreement with the original)
    baseline: float
    result: float
    drop_points: float
    budget_points: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def message(self) -> str:
        if self.budget_points is None:
            return f"no accuracy budget set ({self.basis} drop {self.drop_points:.2f} points)"
        verdict = "within" if self.passed else "over"
        return (f"{self.basis} drop {self.drop_points:.2f} points ({100 * self.baseline:.2f}% -> {100 * self.result:.2f}%) "
                f"is {verdict} the budget of {self.budget_points:.2f} points")


def check(baseline: float, result: float, budget_points: float | None, basis: str = "top1") -> GateResult:
    """`baseline`/`result` are fractions (0.97); the drop and the budget are percentage points."""
    if budget_points is not None and budget_points < 0:
        raise EdgeKitError(f"budget top1_drop={budget_points}: must be >= 0 percentage points")
    drop = round(100.0 * (baseline - result), 4)
    passed = budget_points is None or drop <= budget_points + 1e-9
    return GateResult(passed, basis, baseline, result, drop, budget_points)


def judge(baseline: dict, measured: dict, budget_points: float | None, baseline_top1: float | None = None) -> GateResult:
    """The gate for one evaluation (kit.compress.chain's step rows, kit.evaluate.evaluate_artifact's
    dict): top-1 against the original's when labelled (`baseline_top1` overrides the original's),
    else the share of inputs whose top-1 class is unchanged stands in for the accuracy."""
    if "top1" in baseline:
        return check(baseline["top1"] if baseline_top1 is None else baseline_top1, measured["top1"], budget_points, "top1")
    return check(1.0, measured["agreement"]["top1_match"], budget_points, "agreement")


def refuse_if_over(gate: GateResult, override: bool, what: str = "the compressed model") -> None:
    """Raise unless the gate passed or the user overrides (--override-budget)."""
    if not gate.passed and not override:
        raise EdgeKitError(f"{what} refused: {gate.message}; loosen the recipe's budget or pass --override-budget")
