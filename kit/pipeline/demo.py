"""`edgekit demo`: the whole job on embedded defaults, no device and no network.

digits -> teacher CNN -> MobileNetV2 student by distillation -> int8 for XNNPACK (PT2E) and ORT
(QDQ) -> accuracy of every variant -> .pte / .onnx bundles -> bench on the `local` device agent ->
SQLite results -> HTML report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kit.compress import Distill, Int8Static, OrtInt8Static, TrainConfig, distill, quantize, quantize_onnx, train
from kit.data import load_data
from kit.errors import EdgeKitError
from kit.evaluate import accuracy, torch_predictor
from kit.devices import BenchOptions, LocalDevice, bench
from kit.models import TeacherCNN, mobilenet_student
from kit.package import package, runner_for
from kit.progress import ProgressFn, report
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


def _demo_recipe(variant: str, cfg: DemoConfig) -> dict:
    """What the demo did to make `variant`, in recipe form: the report shows it beside each point."""
    runtime = "executorch" if variant.endswith("-pte") else "onnxruntime"
    steps = [{"method": "distill", "epochs": cfg.student_epochs, "width_mult": cfg.width_mult}]
    if "-int8-" in variant:
        steps.append({"method": "quantize" if runtime == "executorch" else "ort_quantize", "per_channel": True})
    return {"name": f"demo-{variant}", "runtime": runtime, "format": variant.rsplit("-", 1)[1], "compress": steps}


def run_demo(cfg: DemoConfig | None = None, progress: ProgressFn = None, step=None) -> DemoResult:
    """Run the whole pipeline; `step(label)` announces each stage, `progress` drives bars."""
    cfg = cfg or DemoConfig()
    step = step or (lambda label: None)
    out = Path(cfg.out)
    _check_out(out)
    t_start = time.time()
    torch.manual_seed(cfg.seed)

    step("data")
    splits = load_data(cfg.data, cfg.image_size, cfg.seed)
    channels = splits.train.x.shape[1]
    example = splits.test.x[:1]

    step("teacher")
    teacher = train(TeacherCNN(in_channels=channels, num_classes=splits.num_classes), splits.train,
                    TrainConfig(epochs=cfg.teacher_epochs, seed=cfg.seed), progress)
    step("student (distillation)")
    student = mobilenet_student("mobilenet_v2", cfg.width_mult, splits.num_classes, in_channels=channels, stem_stride=1)
    student = distill(teacher, student, splits.train, Distill(train=TrainConfig(epochs=cfg.student_epochs, seed=cfg.seed)), progress)

    step("int8 quantization (XNNPACK PT2E)")
    q_pte = quantize(student, Int8Static(per_channel=True), splits.calib)

    step("packaging")
    from kit.package.signing import ensure_keys

    ensure_keys()  # the demo needs no setup: a signing key pair is made on first use (edgekit keys init)
    bundles_dir = out / "bundles"
    bundles = {
        "student-fp32-pte": package(student, "executorch", bundles_dir / "student-fp32-pte", example, name="digits-student"),
        "student-int8-pte": package(q_pte, "executorch", bundles_dir / "student-int8-pte", example, name="digits-student"),
        "student-fp32-onnx": package(student, "onnx", bundles_dir / "student-fp32-onnx", example, name="digits-student"),
    }
    step("int8 quantization (ORT QDQ)")
    q_onnx = quantize_onnx(bundles["student-fp32-onnx"].model_file, OrtInt8Static(per_channel=True), splits.calib,
                           out / "student-int8.onnx")
    bundles["student-int8-onnx"] = package(q_onnx, "onnx", bundles_dir / "student-int8-onnx", example, name="digits-student")
    q_onnx.unlink()

    step("accuracy")
    acc = {"teacher-fp32": accuracy(torch_predictor(teacher), splits.test),
           "student-fp32": accuracy(torch_predictor(student), splits.test)}
    for i, (variant, b) in enumerate(bundles.items()):
        acc[variant] = accuracy(runner_for(b.model_file), splits.test)
        report(progress, "accuracy", i + 1, len(bundles))

    step("bench on device 'local'")
    store_path = out / "results.db"
    results = [VariantResult("teacher-fp32", acc["teacher-fp32"]), VariantResult("student-fp32", acc["student-fp32"])]
    with ResultsStore(store_path) as store, LocalDevice() as device:
        run_id = store.start_run("demo", note=f"data={cfg.data} size={cfg.image_size}")
        for i, (variant, b) in enumerate(bundles.items()):
            m = bench(device, b, BenchOptions(runs=cfg.runs, threads=cfg.threads))
            store.record(run_id, b, m, variant, acc[variant], recipe=_demo_recipe(variant, cfg), accuracy_n=len(splits.test.y))
            results.append(VariantResult(variant, acc[variant], str(b.path), m.p50_ms, m.p99_ms,
                                         b.manifest["model"]["size"], m.reference_passed))
            report(progress, "bench", i + 1, len(bundles))
        rows = store.measurements(run_id)
    step("report")
    report_path = write_report(rows, out, title="EdgeKit demo: digits, MobileNetV2 student")
    return DemoResult(out=str(out), results_db=str(store_path), report=str(report_path),
                      seconds=time.time() - t_start, variants=results)
