"""`edgekit demo`: the whole job on embedded defaults, no device and no network.

digits -> teacher CNN -> MobileNetV2 student by distillation -> four recipes run on the student
through apply_recipe (fp32 and int8 for XNNPACK .pte and ORT .onnx: compress, package, accuracy of
the packaged artifact) -> measure on the `local` device agent -> SQLite results -> HTML report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kit.compress import Distill, TrainConfig, distill, train
from kit.data import load_data
from kit.devices.bench import BenchOptions
from kit.devices.local import LocalDevice
from kit.errors import EdgeKitError
from kit.evaluate import accuracy, torch_predictor
from kit.models import TeacherCNN, mobilenet_student
from kit.package.bundle import Bundle
from kit.package.signing import ensure_keys
from kit.pipeline.build import apply_recipe
from kit.pipeline.measure import measure
from kit.progress import ProgressFn, report
from kit.recipes import Recipe
from kit.results.report import write_report
from kit.results.store import ResultsStore


@dataclass
class DemoConfig:
    out: Path = Path("edgekit-out")
    data: str = "digits"
    image_size: int = 32
    teacher_epochs: int = 6
    student_epochs: int = 8
    width_mult: float = 0.5
    runs: int = 100
    threads: int = 1
    seed: int = 0


@dataclass
class VariantResult:
    variant: str
    accuracy: float
    bundle: str | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    size_bytes: int | None = None
    reference_passed: bool | None = None


@dataclass
class DemoResult:
    out: str
    results_db: str
    report: str
    seconds: float
    variants: list[VariantResult] = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise EdgeKitError(f"output folder {out}: not writable ({e.strerror}); choose another with --out") from e


# The demo's artifacts, in bench order. Each is a recipe run on the distilled student.
VARIANTS = ("student-fp32-pte", "student-int8-pte", "student-fp32-onnx", "student-int8-onnx")


def _demo_recipe(variant: str, cfg: DemoConfig) -> dict:
    """What the demo did to make `variant`, in recipe form: the report shows it beside each point.
    The first step (distillation) is shared by every variant, so the demo runs it once; the rest
    of the recipe goes through apply_recipe."""
    runtime = "executorch" if variant.endswith("-pte") else "onnxruntime"
    steps = [{"method": "distill", "epochs": cfg.student_epochs, "width_mult": cfg.width_mult}]
    if "-int8-" in variant:
        steps.append({"method": "quantize" if runtime == "executorch" else "ort_quantize", "per_channel": True})
    return {"name": f"demo-{variant}", "device": "local", "runtime": runtime, "format": variant.rsplit("-", 1)[1],
            "compress": steps}


def _student(teacher, splits, cfg: DemoConfig, progress: ProgressFn):
    student = mobilenet_student("mobilenet_v2", cfg.width_mult, splits.num_classes, in_channels=splits.train.x.shape[1],
                                stem_stride=1)
    return distill(teacher, student, splits.train, Distill(train=TrainConfig(epochs=cfg.student_epochs, seed=cfg.seed)),
                   progress)


def run_demo(cfg: DemoConfig | None = None, progress: ProgressFn = None, step=None) -> DemoResult:
    """Run the whole job; `step(label)` announces each stage, `progress` drives bars."""
    cfg = cfg or DemoConfig()
    step = step or (lambda label: None)
    out = Path(cfg.out)
    _check_out(out)
    t_start = time.time()
    torch.manual_seed(cfg.seed)

    step("data")
    splits = load_data(cfg.data, cfg.image_size, cfg.seed)
    step("teacher")
    teacher = train(TeacherCNN(in_channels=splits.train.x.shape[1], num_classes=splits.num_classes), splits.train,
                    TrainConfig(epochs=cfg.teacher_epochs, seed=cfg.seed), progress)
    step("student (distillation)")
    student = _student(teacher, splits, cfg, progress)
    results = [VariantResult("teacher-fp32", accuracy(torch_predictor(teacher), splits.test)),
               VariantResult("student-fp32", accuracy(torch_predictor(student), splits.test))]

    ensure_keys()  # the demo needs no setup: a signing key pair is made on first use (edgekit keys init)
    built = {}
    for variant in VARIANTS:
        doc = _demo_recipe(variant, cfg)
        step(f"recipe {doc['name']}")
        recipe = Recipe.model_validate({**doc, "compress": doc["compress"][1:]})
        built[variant] = apply_recipe(recipe, student, splits, out / "bundles" / variant, name="digits-student",
                                      baseline_accuracy=results[1].accuracy, progress=progress)

    step("bench on device 'local'")
    store_path = out / "results.db"
    with ResultsStore(store_path) as store, LocalDevice() as device:
        run_id = store.start_run("demo", note=f"data={cfg.data} size={cfg.image_size}")
        for i, (variant, applied) in enumerate(built.items()):
            bundle = Bundle.load(applied.bundle_path)
            m = measure(device, bundle, store, options=BenchOptions(runs=cfg.runs, threads=cfg.threads), run_id=run_id,
                        variant=variant, accuracy=applied.accuracy, recipe=_demo_recipe(variant, cfg),
                        accuracy_n=len(splits.test.y)).measurement
            results.append(VariantResult(variant, applied.accuracy, str(bundle.path), m.p50_ms, m.p99_ms,
                                         applied.size_bytes, m.reference_passed))
            report(progress, "bench", i + 1, len(built))
        store.finish_run(run_id)
        rows = store.measurements(run_id)
    step("report")
    report_path = write_report(rows, out, title="EdgeKit demo: digits, MobileNetV2 student")
    return DemoResult(out=str(out), results_db=str(store_path), report=str(report_path),
                      seconds=time.time() - t_start, variants=results)
