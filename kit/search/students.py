"""Hardware-aware student search, in the spirit of NetAdapt and MnasNet: adapt a MobileNet student
to a device by measuring candidates on that device.

The space is MobileNetV2 width multiplier x depth multiplier x input resolution. For each
candidate the student is built (seeded, so the same candidate is the same artifact), packaged
and timed on the target device; the timing lands in the results store keyed by the artifact's
sha256, so the device's latency table is built once and reused by later searches. Candidates
over the latency budget are dropped before any training (NetAdapt's trick: latency is cheap to
measure, accuracy is not). The rest get a short distillation from the teacher for accuracy.
Grid order (cheapest first) or a small evolutionary search, both bounded by a time budget.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kit.compress.distill import Distill, TrainConfig, distill, train
from kit.data import Splits, load_data
from kit.errors import EdgeKitError
from kit.evaluate import accuracy, count_macs, count_params, torch_predictor
from kit.devices.bench import BenchOptions
from kit.models import mobilenet_student
from kit.package import package
from kit.pipeline.measure import measure
from kit.progress import ProgressFn, report
from kit.results.pareto import front_of
from kit.results.store import ResultsStore

STRATEGIES = ("grid", "evolution")
_OBJECTIVES = (("p50_ms", "min"), ("accuracy", "max"))


@dataclass
class StudentSpace:
    widths: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    depths: list[float] = field(default_factory=lambda: [0.5, 1.0])
    resolutions: list[int] = field(default_factory=lambda: [16, 24, 32])
    arch: str = "mobilenet_v2"

    def __post_init__(self):
        for name, values, lo, hi in (("widths", self.widths, 0.05, 2.0), ("depths", self.depths, 0.1, 2.0),
                                     ("resolutions", self.resolutions, 8, 512)):
            if not values:
                raise EdgeKitError(f"student space {name}: give at least one value")
            bad = [v for v in values if not lo <= v <= hi]
            if bad:
                raise EdgeKitError(f"student space {name}: {bad} out of range; choose values between {lo} and {hi}")

    def points(self) -> list[tuple[float, float, int]]:
        return list(itertools.product(sorted(self.widths), sorted(self.depths), sorted(self.resolutions)))


@dataclass
class StudentCandidate:
    width: float
    depth: float
    resolution: int
    params: int = 0
    macs: int = 0
    size_bytes: int | None = None
    p50_ms: float | None = None
    accuracy: float | None = None
    reused_latency: bool = False
    trained: bool = False
    on_front: bool = False
    chosen: bool = False
    skipped: str = ""  # why it was not trained (over the latency budget)

    @property
    def key(self) -> tuple[float, float, int]:
        return (self.width, self.depth, self.resolution)


@dataclass
class StudentSearchResult:
    device: str
    strategy: str
    time_budget_s: float
    latency_budget_ms: float | None
    candidates: list[StudentCandidate] = field(default_factory=list)
    measured: int = 0  # candidates timed on the device in this search
    reused: int = 0  # candidates whose timing came from the results store
    trained: int = 0  # candidates distilled for accuracy
    space_size: int = 0
    stopped_by_time: bool = False
    chosen: tuple[float, float, int] | None = None
    seconds: float = 0.0

    @property
    def front(self) -> list[StudentCandidate]:
        return [c for c in self.candidates if c.on_front]

    def to_dict(self) -> dict:
        return asdict(self)


def _build(space: StudentSpace, key, num_classes: int, channels: int, seed: int) -> torch.nn.Module:
    width, depth, resolution = key
    torch.manual_seed(seed)  # same candidate, same weights, same .pte bytes: the timing is reused
    # A stride-1 stem keeps enough spatial resolution for small inputs (digits at 16-32 px).
    return mobilenet_student(space.arch, width, num_classes, in_channels=channels,
                             stem_stride=1 if resolution <= 64 else None, depth_mult=depth)


def _student_bundle(student: torch.nn.Module, key, splits: Splits, out: Path, name: str, seed: int):
    """The candidate's fp32 .pte bundle, through the build cache (kit.cache): the same untrained,
    seeded student is the same artifact, so a later search skips the export as well as the bench."""
    import shutil

    from kit.cache import build_key, cached, hash_module
    from kit.package import Bundle
    from kit.package.signing import key_id

    cache_key = build_key(kind="student-search", student=hash_module(student), key=list(key), seed=seed, name=name,
                          input=list(splits.test.x[:1].shape), signing_key=key_id())
    folder, _ = cached(cache_key, lambda tmp: package(student, "executorch", tmp / "bundle", splits.test.x[:1], name=name))
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(folder / "bundle", out)
    return Bundle.load(out)


def _mutate(key, space: StudentSpace, rng: random.Random):
    axes = [sorted(space.widths), sorted(space.depths), sorted(space.resolutions)]
    axis = rng.randrange(3)
    values = axes[axis]
    i = values.index(key[axis]) + rng.choice((-1, 1))
    new = list(key)
    new[axis] = values[max(0, min(len(values) - 1, i))]
    return tuple(new)


def prepare_teacher(spec: str, weights: str | Path | None = None, *, data: str = "digits", epochs: int = 0,
                    progress: ProgressFn = None, step: Callable[[str], None] | None = None) -> torch.nn.Module:
    """The teacher for a student search: the model `spec` (kit.models.load_model; 'teacher' is the
    demo CNN), first trained `epochs` epochs on `data` when asked (a fresh demo CNN knows nothing)."""
    from kit.models import load_model

    net = load_model(spec, weights)
    if epochs:
        (step or (lambda label: None))(f"training the teacher ({epochs} epochs)")
        net = train(net, load_data(data).train, TrainConfig(epochs=epochs), progress)
    return net


def student_search(teacher: torch.nn.Module, data: str | Splits, device, *, store: ResultsStore,
                   space: StudentSpace | None = None, strategy: str = "grid", time_budget_s: float = 600.0,
                   max_candidates: int | None = None, latency_budget_ms: float | None = None, distill_epochs: int = 2,
                   distill_lr: float = 5e-3, distill_batch_size: int = 32, distill_max_samples: int | None = None,
                   threads: int = 1, runs: int = 20, seed: int = 0, work_dir: str | Path | None = None,
                   progress: ProgressFn = None, step: Callable[[str], None] | None = None) -> StudentSearchResult:
    """Search MobileNet students for `device`; return every candidate tried, the front and the choice."""
    space = space or StudentSpace()
    if strategy not in STRATEGIES:
        raise EdgeKitError(f"student search strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if time_budget_s <= 0:
        raise EdgeKitError(f"time budget {time_budget_s} s: must be > 0")
    step = step or (lambda label: None)
    t0 = time.time()
    points = space.points()
    limit = min(len(points), max_candidates or len(points))
    result = StudentSearchResult(device=device.name, strategy=strategy, time_budget_s=time_budget_s,
                                 latency_budget_ms=latency_budget_ms, space_size=len(points))
    run_id = store.start_run("student-search", note=f"device={device.name} strategy={strategy}")
    splits_cache: dict[int, Splits] = {}

    def splits_at(resolution: int) -> Splits:
        if isinstance(data, Splits):
            if data.train.x.shape[-1] != resolution:
                raise EdgeKitError(f"data {data.name!r} is {data.train.x.shape[-1]} px; pass a data spec (e.g. 'digits') "
                                   "so each resolution can be loaded")
            return data
        if resolution not in splits_cache:
            splits_cache[resolution] = load_data(data, resolution, seed)
        return splits_cache[resolution]

    seen: dict[tuple, StudentCandidate] = {}
    tmp = tempfile.TemporaryDirectory() if work_dir is None else None
    work = Path(tmp.name if tmp else work_dir)

    def evaluate(key) -> StudentCandidate:
        splits = splits_at(key[2])
        channels = splits.train.x.shape[1]
        student = _build(space, key, splits.num_classes, channels, seed)
        c = StudentCandidate(*key, params=count_params(student), macs=count_macs(student, (1, channels, key[2], key[2])))
        name = f"student-w{key[0]:g}-d{key[1]:g}-r{key[2]}"
        step(f"{name}: latency on {device.name}")
        bundle = _student_bundle(student, key, splits, work / name, name, seed)
        c.size_bytes = int(bundle.manifest["model"]["size"])
        out = measure(device, bundle, store, options=BenchOptions(runs=runs, warmup=3, threads=threads), run_id=run_id,
                      variant=f"student-search:{name}", reuse=True, progress=progress)
        c.p50_ms, c.reused_latency = out.p50_ms, out.reused
        if out.reused:
            result.reused += 1
        else:
            result.measured += 1
        if latency_budget_ms is not None and c.p50_ms > latency_budget_ms:
            c.skipped = f"p50 {c.p50_ms:.3f} ms > budget {latency_budget_ms:g} ms"
            return c
        step(f"{name}: distillation ({distill_epochs} epoch{'s' if distill_epochs != 1 else ''})")
        student = distill(teacher, student, splits.train,
                          Distill(train=TrainConfig(epochs=distill_epochs, lr=distill_lr, batch_size=distill_batch_size,
                                                    max_samples=distill_max_samples, seed=seed)), progress)
        c.accuracy = accuracy(torch_predictor(student), splits.test) if splits.test.y is not None else None
        c.trained = True
        result.trained += 1
        return c

    def out_of_time() -> bool:
        return time.time() - t0 >= time_budget_s

    try:
        if strategy == "grid":
            # Cheapest first (fewest MACs is roughly smallest width/depth/resolution), so a short
            # budget still spans the fast end of the front.
            queue = sorted(points, key=lambda k: k[0] * k[0] * k[1] * k[2] * k[2])
        else:
            rng = random.Random(seed)
            queue = rng.sample(points, min(len(points), max(2, limit // 3)))
        while queue and len(seen) < limit:
            if out_of_time():
                result.stopped_by_time = True
                break
            key = queue.pop(0)
            if key in seen:
                continue
            seen[key] = evaluate(key)
            report(progress, "student search", len(seen), limit)
            if strategy == "evolution" and not queue:
                parents = [c.key for c in front_of([c for c in seen.values() if c.trained], _OBJECTIVES)] or list(seen)
                children = {_mutate(p, space, rng) for p in parents for _ in range(2)}
                queue = [k for k in children if k not in seen]
                if not queue:  # the front's neighbourhood is exhausted: jump somewhere unseen
                    unseen = [k for k in points if k not in seen]
                    queue = [rng.choice(unseen)] if unseen else []
    finally:
        if tmp:
            tmp.cleanup()

    result.candidates = list(seen.values())
    trained = [c for c in result.candidates if c.trained and c.accuracy is not None]
    for c in front_of(trained, _OBJECTIVES):
        c.on_front = True
    if trained:
        best = max(trained, key=lambda c: (c.accuracy, -c.p50_ms))
        best.chosen = True
        result.chosen = best.key
    store.finish_run(run_id)
    result.seconds = time.time() - t0
    return result
