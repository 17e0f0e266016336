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
from kit.progress import ProgressFn, report
from kit.recipes import Recipe, available_recipes, load_recipe
from kit.pipeline.build import apply_recipe, json_safe
from kit.results.pareto import front_of
from kit.search.facts import float_islands_note, pruning_note, step_facts  # noqa: F401  (kit.search.recipes.step_facts, as before)
from kit.search.payoff import HostTimeExceeded, baseline_recipes, capped_progress, judge_pays_off, measure_all
from kit.search.plot import plot_front  # noqa: F401  (kit.search.recipes.plot_front, as before)
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
    pruning: str = ""  # what NetAdapt did (step info): where it stopped and the share of MACs left
    float_islands: str = ""  # what ort_quantize's float_islands kept in float, and why (step info)
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
    # Pays off? Against the best uncompressed artifact (fp32 .pte / .onnx, same threads) of the same run.
    uncompressed: bool = False  # no compression step: a reference, never has to pay off
    reference: str | None = None  # the baseline compared with (the faster uncompressed artifact)
    reference_p50_ms: float | None = None
    speedup: float | None = None  # reference p50 / this p50: above 1 is faster
    verdict: str | None = None  # faster | same | slower | too few samples (kit.results.compare, 99%)
    speedup_ci: list | None = None  # 99% bootstrap interval of the speed-up
    side_by_side: bool = True  # False: this candidate's figures were reused from the store, not benched now
    agreement_lost: float | None = None  # the reference's agreement minus this one's (share 0..1)
    size_ratio: float | None = None  # size / the reference's size
    host_seconds: float | None = None  # compress + package seconds on the host (the original build's, if cached)
    skipped: str = ""  # not built or not measured, and why (e.g. over --max-host-seconds)
    samples: list = field(default_factory=list, repr=False)  # latency samples (ms), not written to JSON

    @property
    def label(self) -> str:
        return f"{self.recipe}@{self.threads}t"


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
    baselines: list[Candidate] = field(default_factory=list)  # the uncompressed artifacts, per thread count
    references: dict = field(default_factory=dict)  # threads -> the fastest baseline's recipe name
    chosen_threads: int | None = None
    chosen_why: str = ""  # why the choice is what it is (e.g. nothing compressed pays off)
    max_host_seconds: float | None = None
    require_pays_off: bool = False  # compressed candidates count as within budget only if faster beyond noise
    host_seconds: float = 0.0  # host seconds spent building in this run (cache hits cost ~0)

    @property
    def front(self) -> list[Candidate]:
        return [c for c in self.candidates if c.on_front]

    @property
    def chosen_candidate(self) -> Candidate | None:
        return next((c for c in [*self.candidates, *self.baselines] if c.chosen), None)

    def to_dict(self) -> dict:
        """JSON-safe (an SQNR of inf for identical outputs is the string "inf"); latency samples left out."""
        doc = asdict(self)
        for c in [*doc["candidates"], *doc["baselines"]]:
            c.pop("samples", None)
        return json_safe(doc)


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


def _splits_loader(data, seed: int):
    """splits_for(recipe) -> (Splits as this recipe's model is fed, its key), each kind loaded once."""
    cache: dict[tuple, Splits] = {}

    def splits_for(recipe) -> tuple[Splits, tuple]:
        pre = recipe.input.preprocessing()
        key = (recipe.input.image_size, None if pre is None else repr(pre))
        if isinstance(data, Splits):
            return data, key
        if key not in cache:
            cache[key] = load_data(data, recipe.input.image_size or 32, seed, preprocess=pre)
        return cache[key], key

    return splits_for


def _build(c: Candidate, recipe: Recipe, model, splits: Splits, out: Path, *, teacher, baseline, name, cache,
           progress, max_host_seconds) -> dict | None:
    """Compress + package one candidate (capped at max_host_seconds); its figures into `c`; the build."""
    t0 = time.time()
    try:
        applied = apply_recipe(recipe, model, splits, out, teacher=teacher, baseline_accuracy=baseline, name=name,
                               cache=cache, progress=capped_progress(progress, max_host_seconds, t0))
    except HostTimeExceeded as e:
        c.skipped, c.host_seconds = f"skipped: {e}", round(time.time() - t0, 1)
        return None
    c.built_from_cache = applied.from_cache
    c.host_seconds = float(applied.report.get("seconds") or applied.seconds)
    if max_host_seconds is not None and not applied.from_cache and c.host_seconds > max_host_seconds:
        c.skipped = f"skipped: host time {c.host_seconds:.0f} s > --max-host-seconds {max_host_seconds:g}"
        return None
    c.accuracy, c.top1_drop, c.size_bytes = applied.accuracy, applied.top1_drop, applied.size_bytes
    c.model_sha256, c.bundle_path = applied.model_sha256, applied.bundle_path
    art = applied.report["artifact"]["agreement"]
    c.agreement, c.sqnr_db = float(art["top1_match"]), float(art["sqnr_db"])
    c.int8_macs_share, c.worst_layers = step_facts(applied.report)
    c.pruning = pruning_note(applied.report)
    c.float_islands = float_islands_note(applied.report)
    return {"applied": applied, "seconds": time.time() - t0}


def search(model, data: str | Splits, device, candidates: list[Recipe], *, store: ResultsStore, out_dir: str | Path,
           budget_top1_drop: float | None = 1.0, budget_agreement: float | None = None,
           budget_sqnr_db: float | None = None, teacher=None, model_name: str = "model", seed: int = 0,
           cache: bool = True, threads: list[int] | None = None, baselines: bool = True,
           max_host_seconds: float | None = None, require_pays_off: bool = False, progress: ProgressFn = None,
           step: Callable[[str], None] | None = None) -> SearchResult:
    """Try each candidate recipe on `device`; return every candidate with the front and the choice.

    `data` is a data spec for kit.data.load_data (loaded at each recipe's input size) or ready Splits.
    `budget_top1_drop` (points), `budget_agreement` (a floor, share 0..1 of inputs whose top-1 is
    the original's) and `budget_sqnr_db` (a floor, dB) override those of each recipe's budget for the
    choice (None: the recipe's); every candidate's artifact is judged by kit.compress.gate.judge.
    `cache`: reuse compressed bundles from kit.cache (measurements are reused from `store` either way).
    `threads`: measure every candidate at each of these thread counts (None: each recipe's own).
    `baselines`: also build and bench the uncompressed fp32 .pte and .onnx (kit.search.payoff) at
    each thread count and give every candidate its speed-up against the faster of them, with a
    noise verdict. `require_pays_off` (with baselines): a compressed candidate is within budget only
    if it pays off (faster beyond noise); with none, the best uncompressed is chosen, saying why. `max_host_seconds`: skip a candidate whose compress +
    package takes (or is predicted to take) longer, naming the reason: checked at every progress
    tick of its steps and once the build is done; a build from the cache costs nothing and is kept.
    """
    if not candidates:
        raise EdgeKitError("recipe search needs at least one candidate recipe")
    from kit.package.signing import load_private_key

    load_private_key()  # every candidate is a signed bundle: a missing key fails here, not once per candidate
    step = step or (lambda label: None)
    out_dir = Path(out_dir)
    t0 = time.time()
    splits_for = _splits_loader(data, seed)
    baseline: dict[tuple, float | None] = {}
    data_name = data.name if isinstance(data, Splits) else str(data)
    result = SearchResult(device=device.name, model=model_name, data=data_name, budget_top1_drop=budget_top1_drop,
                          baseline_accuracy=None, budget_agreement=budget_agreement, budget_sqnr_db=budget_sqnr_db,
                          max_host_seconds=max_host_seconds, require_pays_off=require_pays_off and baselines)
    gates, recipes = {}, {}
    result.run_id = store.start_run("search", note=f"model={model_name} data={data_name} device={device.name}")
    counts = sorted(set(threads)) if threads else None

    def build_one(recipe, c_list, where, cap=max_host_seconds):
        c0 = c_list[0]
        try:
            splits, size = splits_for(recipe)
            if size not in baseline:
                baseline[size] = accuracy(torch_predictor(model), splits.test) if splits.test.y is not None else None
            result.baseline_accuracy = baseline[size]
            b = _build(c0, recipe, model, splits, where, teacher=teacher, baseline=baseline[size], name=model_name,
                       cache=cache, progress=progress, max_host_seconds=cap)
            if b is not None:
                result.host_seconds += b["seconds"]
                applied = b["applied"]
                gate = judge(applied.report["baseline"], applied.report["artifact"],
                             effective_budget(recipe, budget_top1_drop, budget_agreement, budget_sqnr_db),
                             baseline[size], samples=applied.report.get("eval_samples"))
                gates[recipe.name], c0.gate = gate, gate.to_dict()
        except EdgeKitError as e:
            # One recipe the model cannot take (an op the exporter refuses, ...) must not end the search.
            c0.error = str(e)
        for c in c_list[1:]:  # the same artifact at other thread counts: same build, same figures
            for k in ("built_from_cache", "host_seconds", "skipped", "accuracy", "top1_drop", "size_bytes",
                      "model_sha256", "bundle_path", "agreement", "sqnr_db", "int8_macs_share", "worst_layers",
                      "pruning", "float_islands", "gate", "error"):
                setattr(c, k, getattr(c0, k))

    for i, recipe in enumerate(candidates):
        recipes[recipe.name] = recipe
        rows = [Candidate(recipe=recipe.name, runtime=recipe.runtime, format=recipe.format, threads=t,
                          uncompressed=not recipe.compress) for t in (counts or [recipe.threads])]
        result.candidates.extend(rows)
        step(f"candidate {i + 1}/{len(candidates)}: {recipe.name} (compress + package)")
        build_one(recipe, rows, out_dir / recipe.name)
        report(progress, "search: build", i + 1, len(candidates))
    if baselines:
        ref_recipe = candidates[0]
        for b in baseline_recipes(ref_recipe):
            recipes[b.name] = b
            rows = [Candidate(recipe=b.name, runtime=b.runtime, format=b.format, threads=t, uncompressed=True)
                    for t in (counts or sorted({r.threads for r in candidates}))]
            result.baselines.extend(rows)
            same = next((c for c in result.candidates if c.uncompressed and c.bundle_path and c.runtime == b.runtime
                         and c.format == b.format and recipes[c.recipe].input == b.input), None)
            if same is not None:  # an uncompressed candidate is this very artifact: no second build
                for c in rows:
                    for k in ("built_from_cache", "host_seconds", "accuracy", "top1_drop", "size_bytes", "model_sha256",
                              "bundle_path", "agreement", "sqnr_db", "gate"):
                        setattr(c, k, getattr(same, k))
                gates[b.name] = gates.get(same.recipe)
                continue
            step(f"baseline {b.name} (uncompressed, for the pays-off verdicts)")
            build_one(b, rows, out_dir / b.name, cap=None)  # the reference is never capped
    measure_all(result, recipes, device, store, progress, step)
    _decide(result, recipes, gates, budget_top1_drop)
    store.finish_run(result.run_id)
    result.seconds = time.time() - t0
    return result


def _decide(result: SearchResult, recipes: dict, gates: dict, budget_top1_drop: float | None) -> None:
    """Budgets, pays-off verdicts, the front and the choice."""
    for c in [*result.candidates, *result.baselines]:
        r = recipes[c.recipe]
        _judge(c, r, budget_top1_drop if budget_top1_drop is not None else r.budget.top1_drop, gates.get(c.recipe))
        if c.skipped:
            c.within_budget, c.why_not = False, c.skipped
    for t in sorted({b.threads for b in result.baselines}):
        refs = [b for b in result.baselines if b.threads == t and b.p50_ms is not None]
        if not refs:
            continue
        ref = min(refs, key=lambda b: b.p50_ms)
        result.references[t] = ref.recipe
        for c in [*result.candidates, *refs]:
            if c.threads == t and c is not ref:
                why = judge_pays_off(c, ref)
                if c in result.candidates and why and c.within_budget and result.require_pays_off:
                    c.within_budget, c.why_not = False, why
        ref.reference, ref.reference_p50_ms, ref.speedup, ref.verdict = ref.recipe, ref.p50_ms, 1.0, "same"
        ref.agreement_lost, ref.size_ratio = 0.0, 1.0
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
    # The front holds every trade-off; within the budget the fastest wins (then the smaller, then the more
    # accurate). With require_pays_off a compressed candidate is within budget only if it pays off.
    feasible = [c for c in done if c.within_budget]
    best = min(feasible, key=lambda c: (c.p50_ms, c.size_bytes, -(c.accuracy or c.agreement or 0)), default=None)
    if best is not None and (not best.uncompressed or not result.require_pays_off):
        result.chosen_why = (f"fastest within budget; {best.speedup:.2f}x {best.reference} ({best.verdict})"
                             if best.speedup is not None else "fastest within budget")
        if best.verdict not in (None, "faster") and not best.uncompressed:
            result.chosen_why += "; it does not pay off beyond noise (--require-pays-off picks the uncompressed then)"
    elif result.require_pays_off:
        refs = [b for b in result.baselines if b.p50_ms is not None and b.reference_passed is not False]
        ref = min(refs, key=lambda b: b.p50_ms, default=None)
        why = "no compressed candidate is within budget and faster beyond noise than the best uncompressed artifact"
        if ref is not None and best is None:
            best = ref
        result.chosen_why = f"{why}; the best uncompressed is {best.label}" if best else why
        if ref is not None and best is not ref and ref.p50_ms < best.p50_ms:
            result.chosen_why += f" (of the candidates; {ref.label} measured faster, {ref.p50_ms:.3f} ms: add it as a candidate)"
    if best is not None:
        best.chosen = True
        result.chosen, result.chosen_threads = best.recipe, best.threads
