"""Recipe search: try candidate recipes on a device, keep the Pareto front, pick the best in budget.

For each candidate recipe: compress + package (apply_recipe), accuracy on the host, latency (and
energy, when the device has sensors) measured on the device with kit.pipeline.measure. Every
measurement goes into the results store; a later search finds it again by the artifact's sha256,
the device and the thread count (measure's `reuse`), and does not measure that artifact again.
The front is kit.results.pareto's.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from kit.compress.gate import judge
from kit.data import Splits, load_data
from kit.errors import EdgeKitError
from kit.evaluate import accuracy, torch_predictor
from kit.devices.bench import BenchOptions
from kit.package.bundle import Bundle
from kit.pipeline.measure import measure
from kit.progress import ProgressFn, report
from kit.recipes import Recipe, available_recipes, load_recipe
from kit.pipeline.build import apply_recipe, json_safe
from kit.results.pareto import front_of
from kit.results.store import ResultsStore

# (field, direction): the objectives of the front. Energy joins only when every candidate has it.
OBJECTIVES = (("p50_ms", "min"), ("size_bytes", "min"), ("accuracy", "max"))
_HOST_KINDS = {"x86_64": "x86-64", "amd64": "x86-64"}
# Short kinds people write in inventories (`edgekit devices add --kind rpi5`) -> recipe device kinds.
KIND_ALIASES = {"rpi4": "raspberry-pi-4", "pi4": "raspberry-pi-4", "rpi5": "raspberry-pi-5", "pi5": "raspberry-pi-5",
                "jetson": "jetson-orin-nano", "jetson-orin": "jetson-orin-nano", "orin-nano": "jetson-orin-nano",
                "android": "android-arm64", "x86_64": "x86-64", "amd64": "x86-64"}


@dataclass
class Candidate:
    recipe: str
    runtime: str
    format: str
    threads: int
    accuracy: float | None = None
    top1_drop: float | None = None
    size_bytes: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    energy_mj: float | None = None
    agreement: float | None = None  # share (0..1) of test inputs whose top-1 equals the original's
    sqnr_db: float | None = None  # output SQNR vs the original, dB
    int8_macs_share: float | None = None  # share (0..1) of the MACs that run in int8 (the quantize step's info)
    gate: dict | None = None  # kit.compress.gate.GateResult.to_dict() under the search's budget
    worst_layers: list[str] = field(default_factory=list)  # the 3 layers that cost most (step info), if known
    reference_passed: bool | None = None
    reused: bool = False  # the measurement came from the results store
    built_from_cache: bool = False  # the bundle came from the build cache
    measurement_id: int | None = None
    model_sha256: str | None = None
    bundle_path: str | None = None
    within_budget: bool = False
    on_front: bool = False
    chosen: bool = False
    why_not: str = ""  # why a candidate is out of budget or failed
    error: str | None = None


@dataclass
class SearchResult:
    device: str
    model: str
    data: str
    budget_top1_drop: float | None
    baseline_accuracy: float | None
    budget_agreement: float | None = None
    budget_sqnr_db: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    chosen: str | None = None
    measured: int = 0
    reused: int = 0
    objectives: list[str] = field(default_factory=list)
    run_id: int | None = None
    seconds: float = 0.0

    @property
    def front(self) -> list[Candidate]:
        return [c for c in self.candidates if c.on_front]

    def to_dict(self) -> dict:
        """JSON-safe (an SQNR of inf for identical outputs is the string "inf")."""
        return json_safe(asdict(self))


def device_kind(device) -> str | None:
    """The recipe `device` kind a device answers to: the inventory entry's kind, or the host's for `local`."""
    entry = getattr(device, "entry", None)
    if entry is not None and getattr(entry, "kind", None) and entry.kind != "linux":
        return KIND_ALIASES.get(entry.kind, entry.kind)
    if getattr(device, "name", None) == "local":
        return _HOST_KINDS.get(platform.machine().lower())
    return getattr(device, "kind", None)


def load_candidate(name_or_path, overrides: list[str] = (), quick: bool = False) -> Recipe:
    """A recipe as a search candidate; `quick` first applies the recipe's own smoke overrides
    (small inputs, short training) so a trial run takes minutes, not hours."""
    recipe = load_recipe(name_or_path)
    return load_recipe(name_or_path, [*(recipe.smoke if quick else []), *overrides]) if (quick or overrides) else recipe


def candidates_for(kind: str | None, overrides: list[str] = (), quick: bool = False) -> list[Recipe]:
    """Every recipe found whose `device` is `kind`."""
    if not kind:
        raise EdgeKitError("cannot tell which recipes suit this device (no kind); pass the recipes to try with --recipe")
    recipes = []
    for name, path in sorted(available_recipes().items()):
        if load_recipe(path).device == kind:
            recipes.append(load_candidate(path, overrides, quick))
    if not recipes:
        raise EdgeKitError(f"no recipe targets device kind {kind!r}; write one (see 'edgekit recipes list') or pass --recipe")
    return recipes


def effective_budget(recipe: Recipe, top1_drop: float | None = None, agreement: float | None = None,
                     sqnr_db: float | None = None):
    """The recipe's budget with the search's own limits (those given) put over it."""
    update = {k: v for k, v in (("top1_drop", top1_drop), ("agreement", agreement), ("sqnr_db", sqnr_db)) if v is not None}
    return recipe.budget.model_copy(update=update)


def step_facts(report: dict) -> tuple[float | None, list[str]]:
    """(int8 MACs share, the 3 costliest layers) from a build report's chain steps' info: the last
    `int8_macs_share` the quantizers put there, the worst `sensitivity` rows (else the lowest
    `worst_layers_sqnr` rows), each named with its SQNR."""
    share, worst = None, []
    steps = report.get("steps") or (report.get("chain") or {}).get("steps") or []
    for step in steps:
        info = step.get("info") or {}
        if info.get("int8_macs_share") is not None:
            share = float(info["int8_macs_share"])
        rows = info.get("sensitivity") or sorted(info.get("worst_layers_sqnr") or [],
                                                  key=lambda r: float(r.get("sqnr_db", 0.0)))
        if rows:
            worst = [f"{r.get('layer') or r.get('node')} ({float(r['sqnr_db']):.1f} dB)" if "sqnr_db" in r
                     else str(r.get("layer") or r.get("node")) for r in rows[:3]]
    return share, worst


def _judge(c: Candidate, recipe: Recipe, budget: float | None, gate=None) -> None:
    """Within budget or why not. `gate`: kit.compress.gate.judge's verdict on the candidate's artifact
    (the metric, unit and limit named); without it the top-1 drop in points is compared with `budget`."""
    reasons = []
    if c.error:
        reasons.append("failed")
    if gate is not None:
        if not gate.passed:
            reasons.append(gate.short + (f" (costliest layers: {', '.join(c.worst_layers)})" if c.worst_layers else ""))
    elif budget is not None and c.top1_drop is not None and c.top1_drop > budget + 1e-9:
        reasons.append(f"top-1 drop {c.top1_drop:.2f} > {budget:g}")
    if c.reference_passed is False:
        reasons.append("reference check failed on device")
    if recipe.budget.latency_ms is not None and c.p50_ms is not None and c.p50_ms > recipe.budget.latency_ms:
        reasons.append(f"p50 {c.p50_ms:.2f} ms > goal {recipe.budget.latency_ms:g}")
    if recipe.budget.energy_mj is not None and c.energy_mj is not None and c.energy_mj > recipe.budget.energy_mj:
        reasons.append(f"energy {c.energy_mj:.2f} mJ > goal {recipe.budget.energy_mj:g}")
    c.within_budget = not reasons
    c.why_not = "; ".join(reasons)


def search(model, data: str | Splits, device, candidates: list[Recipe], *, store: ResultsStore, out_dir: str | Path,
           budget_top1_drop: float | None = 1.0, budget_agreement: float | None = None,
           budget_sqnr_db: float | None = None, teacher=None, model_name: str = "model", seed: int = 0,
           cache: bool = True, progress: ProgressFn = None, step: Callable[[str], None] | None = None) -> SearchResult:
    """Try each candidate recipe on `device`; return every candidate with the front and the choice.

    `data` is a data spec for kit.data.load_data (loaded at each recipe's input size) or ready Splits.
    `budget_top1_drop` (points), `budget_agreement` (a floor, share 0..1 of inputs whose top-1 is
    the original's) and `budget_sqnr_db` (a floor, dB) override those of each recipe's budget for the
    choice (None: the recipe's); every candidate's artifact is judged by kit.compress.gate.judge.
    `cache`: reuse compressed bundles from kit.cache (measurements are reused from `store` either way).
    """
    if not candidates:
        raise EdgeKitError("recipe search needs at least one candidate recipe")
    from kit.package.signing import load_private_key

    load_private_key()  # every candidate is a signed bundle: a missing key fails here, not once per candidate
    step = step or (lambda label: None)
    out_dir = Path(out_dir)
    t0 = time.time()
    splits_cache: dict[tuple, Splits] = {}
    baseline: dict[tuple, float | None] = {}

    def splits_for(recipe) -> tuple[Splits, tuple]:
        """The data as this recipe's model is fed (its size and preprocessing), loaded once per kind."""
        pre = recipe.input.preprocessing()
        key = (recipe.input.image_size, None if pre is None else repr(pre))
        if isinstance(data, Splits):
            return data, key
        if key not in splits_cache:
            splits_cache[key] = load_data(data, recipe.input.image_size or 32, seed, preprocess=pre)
        return splits_cache[key], key

    data_name = data.name if isinstance(data, Splits) else str(data)
    result = SearchResult(device=device.name, model=model_name, data=data_name, budget_top1_drop=budget_top1_drop,
                          baseline_accuracy=None, budget_agreement=budget_agreement, budget_sqnr_db=budget_sqnr_db)
    gates = {}
    result.run_id = store.start_run("search", note=f"model={model_name} data={data_name} device={device.name}")
    recipes = {}
    for i, recipe in enumerate(candidates):
        recipes[recipe.name] = recipe
        c = Candidate(recipe=recipe.name, runtime=recipe.runtime, format=recipe.format, threads=recipe.threads)
        result.candidates.append(c)
        step(f"candidate {i + 1}/{len(candidates)}: {recipe.name}")
        try:
            splits, size = splits_for(recipe)
            if size not in baseline:
                baseline[size] = accuracy(torch_predictor(model), splits.test) if splits.test.y is not None else None
            result.baseline_accuracy = baseline[size]
            applied = apply_recipe(recipe, model, splits, out_dir / recipe.name, teacher=teacher,
                                   baseline_accuracy=baseline[size], name=model_name, cache=cache, progress=progress)
            c.built_from_cache = applied.from_cache
            c.accuracy, c.top1_drop, c.size_bytes = applied.accuracy, applied.top1_drop, applied.size_bytes
            c.model_sha256, c.bundle_path = applied.model_sha256, applied.bundle_path
            art = applied.report["artifact"]["agreement"]
            c.agreement, c.sqnr_db = float(art["top1_match"]), float(art["sqnr_db"])
            c.int8_macs_share, c.worst_layers = step_facts(applied.report)
            gate = judge(applied.report["baseline"], applied.report["artifact"],
                         effective_budget(recipe, budget_top1_drop, budget_agreement, budget_sqnr_db), baseline[size],
                         samples=applied.report.get("eval_samples"))
            gates[recipe.name], c.gate = gate, gate.to_dict()
            out = measure(device, Bundle.load(applied.bundle_path), store, run_id=result.run_id, reuse=True,
                          options=BenchOptions(runs=recipe.bench.runs, warmup=recipe.bench.warmup, threads=recipe.threads,
                                               power=True),
                          variant=f"recipe:{recipe.name}", accuracy=applied.accuracy, recipe=recipe, progress=progress)
            c.reused, c.measurement_id = out.reused, out.measurement_id
            c.p50_ms, c.p99_ms, c.reference_passed, c.energy_mj = out.p50_ms, out.p99_ms, out.reference_passed, out.energy_mj
            if out.reused:
                result.reused += 1
            else:
                result.measured += 1
        except EdgeKitError as e:
            # One recipe the model cannot take (an op the exporter refuses, ...) must not end the search.
            c.error = str(e)
        report(progress, "search", i + 1, len(candidates))

    for c in result.candidates:
        r = recipes[c.recipe]
        _judge(c, r, budget_top1_drop if budget_top1_drop is not None else r.budget.top1_drop, gates.get(c.recipe))
    done = [c for c in result.candidates if c.error is None and c.p50_ms is not None and c.size_bytes is not None
            and (c.accuracy is not None or c.agreement is not None)]
    objectives = list(OBJECTIVES)
    if done and any(c.accuracy is None for c in done):  # unlabelled data: agreement with the original is the score
        objectives = [(k, d) if k != "accuracy" else ("agreement", "max") for k, d in objectives]
    if done and all(c.energy_mj is not None for c in done):
        objectives.append(("energy_mj", "min"))
    result.objectives = [k for k, _ in objectives]
    for c in front_of(done, objectives):
        c.on_front = True
    feasible = [c for c in done if c.within_budget]
    if feasible:
        # The front holds every trade-off; within the budget the fastest wins (then the smaller, then the more accurate).
        best = min(feasible, key=lambda c: (c.p50_ms, c.size_bytes, -(c.accuracy or c.agreement or 0)))
        best.chosen = True
        result.chosen = best.recipe
    store.finish_run(result.run_id)
    result.seconds = time.time() - t0
    return result


def plot_front(result: SearchResult, path: str | Path) -> Path:
    """Latency vs accuracy of every candidate (marker area ~ size), the front joined, the choice starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled = all(c.accuracy is not None for c in result.candidates if c.p50_ms is not None)
    score = (lambda c: c.accuracy) if labelled else (lambda c: c.agreement)  # noqa: E731  unlabelled: agreement
    done = [c for c in result.candidates if c.p50_ms is not None and score(c) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if done:
        biggest = max(c.size_bytes or 1 for c in done)
        for c in done:
            colour = "tab:blue" if c.within_budget else "tab:gray"
            ax.scatter(c.p50_ms, 100 * score(c), s=40 + 400 * (c.size_bytes or 0) / biggest, color=colour, alpha=0.6,
                       edgecolors="black" if c.on_front else "none")
            ax.annotate(c.recipe, (c.p50_ms, 100 * score(c)), textcoords="offset points", xytext=(6, 4), fontsize=8)
        front = sorted((c for c in done if c.on_front), key=lambda c: c.p50_ms)
        if len(front) > 1:
            ax.plot([c.p50_ms for c in front], [100 * score(c) for c in front], "--", color="tab:orange", label="Pareto front")
        for c in done:
            if c.chosen:
                ax.scatter(c.p50_ms, 100 * score(c), marker="*", s=300, color="tab:red", label=f"chosen: {c.recipe}", zorder=5)
    if labelled and result.baseline_accuracy is not None:
        ax.axhline(100 * result.baseline_accuracy, color="green", lw=0.8, label="original model")
        if result.budget_top1_drop is not None:
            ax.axhline(100 * result.baseline_accuracy - result.budget_top1_drop, color="red", lw=0.8, ls=":",
                       label=f"budget (-{result.budget_top1_drop:g} pt)")
    ax.set_xlabel(f"latency p50 on {result.device} (ms)")
    ax.set_ylabel("top-1 accuracy (%)" if labelled else "top-1 agreement with the original (%)")
    if not labelled and result.budget_agreement is not None:
        ax.axhline(100 * result.budget_agreement, color="red", lw=0.8, ls=":", label=f"agreement floor {result.budget_agreement:.0%}")
    ax.set_title(f"Recipe search: {result.model} on {result.device} (marker area ~ size)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    tmp = path.with_name(path.stem + ".part.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
