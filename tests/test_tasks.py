"""Tasks beyond classification (issue #15): a YOLO-style detector and a small segmenter trained
here on synthetic shapes, their fp32 metric asserted well above chance first (mAP@0.5 and mIoU via
torchmetrics), then compress int8 -> package -> bench on `local` and over a real sshd device, on
both runtimes (.pte through ExecuTorch/XNNPACK, .onnx through ONNX Runtime), with the task metric
in report.json, the manifest, the stored rows and the results display, and the gate refusing an
over-budget result."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from kit.errors import EdgeKitError

RECIPES = {"pte": ("x86-64-int8", ["compress.0.calib_batches=1"]),
           "onnx": ("x86-64-int8-ort", ["compress.0.max_samples=16"])}
SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fixtures_threads.py


@pytest.fixture(scope="session")
def shapes():
    from kit.tasks.shapes import make_shapes

    return make_shapes(192, SIZE, seed=1), make_shapes(32, SIZE, seed=2)


def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    return old


@pytest.fixture(scope="session")
def detector(shapes):
    from kit.tasks.detect import train_detector

    old = _threads(1)  # one thread: oversubscribed OpenMP threads crawl on a shared machine
    try:
        return train_detector(shapes[0].images, shapes[0].targets, steps=120)
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="session")
def segmenter(shapes):
    from kit.tasks.segment import train_segmenter

    old = _threads(1)  # one thread: oversubscribed OpenMP threads crawl on a shared machine
    try:
        return train_segmenter(shapes[0].images, shapes[0].masks, steps=150)
    finally:
        torch.set_num_threads(old)


def _splits(shapes, kind: str, labelled: bool = True):
    from kit.splits import Dataset, Splits
    from kit.tasks.data import object_labels

    train, test = shapes
    y = (lambda s, n: object_labels(s.targets[:n])) if kind == "detection" else (lambda s, n: s.masks[:n])
    return Splits(train=Dataset(train.images[:16], y(train, 16)), calib=Dataset(train.images[16:48], None),
                  test=Dataset(test.images, y(test, len(test)) if labelled else None), num_classes=0, name=f"shapes-{kind}")


def _fp32(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_detector_fp32_map_is_well_above_chance(detector, shapes):
    from kit.tasks import metrics
    from kit.tasks.spec import Task

    out, test = _fp32(detector, shapes[1].images), shapes[1]
    assert out.shape == (len(test), 4 + 2, 8 * 8 + 4 * 4 + 2 * 2)  # one [N, 4+C, A] tensor over strides 8/16/32
    task = Task(kind="detection", params={"image_size": SIZE})
    m50, m = metrics.map50(out, test.targets, task=task), metrics.map50_95(out, test.targets, task=task)
    assert m50 > 0.5 and 0 < m < m50  # random boxes score ~0
    # without labels, against its own fp32 boxes: the pseudo-labels are matched by the same outputs
    assert metrics.map50(out, None, reference=out, task=task) > 0.95
    shuffled = out[np.roll(np.arange(len(out)), 1)]  # another image's boxes: far from the pseudo-labels
    assert metrics.map50(shuffled, None, reference=out, task=task) < 0.3


def test_segmenter_fp32_miou_is_well_above_chance(segmenter, shapes):
    from kit.tasks import metrics

    out, masks = _fp32(segmenter, shapes[1].images), shapes[1].masks
    assert out.shape == (len(masks), 3, SIZE, SIZE)
    background_only = np.zeros_like(out)
    background_only[:, 0] = 1.0
    chance = metrics.miou(background_only, masks)
    assert chance < 0.4 and metrics.miou(out, masks) > 0.6
    assert metrics.pixel_agreement(out, masks) > 0.9 and metrics.pixel_agreement(out, None, reference=out) == 1.0


def test_numpy_nms_matches_torchvision():
    from torchvision.ops import batched_nms

    from kit.tasks.postprocess import batched_nms as np_batched_nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (200, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (200, 2)).astype(np.float32)], 1)
    scores, labels = rng.uniform(0, 1, 200).astype(np.float32), rng.integers(0, 3, 200)
    ours = np_batched_nms(boxes, scores, labels, 0.5)
    ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5).numpy()
    assert 20 < len(ours) < 200 and list(ours) == list(ref)


def _build(model, kind: str, runtime: str, splits, out, extra=(), **kw):
    from kit.pipeline.build import compress_job
    from kit.recipes import load_recipe

    name, smoke = RECIPES[runtime]
    rec = load_recipe(name, [f"input.image_size={SIZE}", f"task.kind={kind}", *smoke, *extra,
                             *([f"task.params.image_size={SIZE}"] if kind == "detection" else [])])
    return compress_job(model, rec, splits, out, cache=False, eval_samples=24, name=f"shapes-{kind}", **kw)


@pytest.mark.parametrize("runtime", ["pte", "onnx"])
@pytest.mark.parametrize("kind", ["detection", "segmentation"])
@pytest.mark.timeout(1200)  # training + two exports on a shared 2-core machine
def test_task_model_int8_package_bench_with_its_metric(kind, runtime, request, shapes, sshd_device, tmp_path, capsys):
    from rich.console import Console

    from kit.cli import main
    from kit.cli.results import _measurements_table
    from kit.devices import BenchOptions
    from kit.devices.ssh import Deadlines, SshDevice
    from kit.package import Bundle
    from kit.pipeline.measure import measure, open_device
    from kit.results.report import write_report
    from kit.results.store import ResultsStore, decode

    model = request.getfixturevalue("detector" if kind == "detection" else "segmenter")  # train only what is used
    metric = {"detection": "kit.tasks.metrics:map50", "segmentation": "kit.tasks.metrics:miou"}[kind]
    built = _build(model, kind, runtime, _splits(shapes, kind), tmp_path / "job")
    report = json.loads(built.report_path.read_text())
    base, art = report["baseline"]["metric"], report["artifact"]["metric"]
    assert base["name"] == art["name"] == metric and "top1" not in report["artifact"]  # the task metric, no top-1
    assert base["value"] > 0.5 and abs(base["value"] - art["value"]) <= 0.05  # int8 keeps the fp32 metric
    assert report["artifact_gate"]["basis"] == f"metric:{metric}" and report["artifact_gate"]["passed"]
    assert report["artifact"]["file"].endswith(".pte" if runtime == "pte" else ".onnx")
    manifest = json.loads((built.bundle_path / "manifest.json").read_text())
    assert manifest["task"]["kind"] == kind and manifest["task"]["metric"] == metric
    assert manifest["task"]["baseline"] == pytest.approx(base["value"]) and manifest["task"]["output"].startswith("[N, ")
    db = tmp_path / "r.db"
    with ResultsStore(db) as store, open_device("local") as device:
        got = measure(device, Bundle.load(built.bundle_path), store, options=BenchOptions(runs=3, warmup=1))
        assert got.reference_passed is True and got.p50_ms > 0
    # the same bundle over a real sshd device: the agent's reference check on its own runtime there.
    # Generous deadlines: this checks outputs, not liveness, on a shared 2-core machine.
    slow = Deadlines(connect_s=30, command_s=300, io_idle_s=120, transfer_s=300, heartbeat_timeout_s=300)
    with ResultsStore(db) as store, SshDevice(sshd_device, deadlines=slow) as device:
        over = measure(device, Bundle.load(built.bundle_path), store, options=BenchOptions(runs=3, warmup=1))
        assert over.reference_passed is True and over.p50_ms > 0
        assert over.row["device"] == sshd_device.name and over.row["runtime"] == manifest["runtime"]["name"]
        stored = decode(over.row)["manifest"]["task"]  # the stored row carries the task and its metric
        assert stored["kind"] == kind and stored["metric"] == metric and stored["value"] == pytest.approx(manifest["task"]["value"])
        rows = store.measurements()
    assert [r["device"] for r in rows] == ["local", sshd_device.name]
    label = {"detection": "mAP@0.5", "segmentation": "mIoU"}[kind]
    html = write_report(rows, tmp_path / "html").read_text()
    assert "task metric" in html and f"{kind} {label} " in html
    assert main(["results", "show", "--results", str(db)]) == 0  # the command itself (its table folds at 80 columns)
    capsys.readouterr()
    buf = io.StringIO()  # the same table at a width where no header folds
    Console(file=buf, width=400).print(_measurements_table(rows, "measurements"))
    assert "task metric" in buf.getvalue() and f"{kind} {label} " in buf.getvalue()


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("runtime", ["pte", "onnx"])
def test_gate_refuses_over_budget_task_metric_on_unlabelled_data(runtime, detector, shapes, tmp_path):
    """No labels: mAP@0.5:0.95 against the fp32 model's own boxes; a zero drop allowed is impossible
    for int8 (every box moves a little), so the chain gate refuses before packaging, naming it."""
    out = tmp_path / "job"
    with pytest.raises(EdgeKitError, match=r"refused: metric kit\.tasks\.metrics:map50_95 [0-9.]+ -> .*over the budget of 0;"
                                           r" loosen budget\.metric_drop"):
        _build(detector, "detection", runtime, _splits(shapes, "detection", labelled=False), out,
               extra=["task.metric=map", "task.metric_drop=0"])
    report = json.loads((out / "report.json").read_text())
    assert report["refused"] and report["bundle"] is None and not (out / "bundle").exists()
    assert report["gate"]["checks"][0]["metric"] == "metric_drop" and report["gate"]["checks"][0]["value"] > 0


def test_task_recipe_section_fills_the_budget_and_refuses_bad_values():
    from kit.recipes import load_recipe

    rec = load_recipe("x86-64-int8", ["task.kind=detection"])
    assert rec.budget.metric == "kit.tasks.metrics:map50" and rec.budget.metric_drop == 0.05
    assert rec.budget.agreement is None  # argmax agreement means nothing for [N, 4+C, A]
    own = load_recipe("x86-64-int8", ["task.kind=segmentation", "budget.metric=tests.test_gate:mean_top_logit",
                                      "budget.metric_drop=0.2"])
    assert own.budget.metric == "tests.test_gate:mean_top_logit" and own.budget.agreement == 0.90  # the user's metric wins
    with pytest.raises(EdgeKitError, match="task.kind"):
        load_recipe("x86-64-int8", ["task.kind=tracking"])
    plain = load_recipe("x86-64-int8")
    assert plain.task is None and "task" not in plain.summary()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["segmentation", "detection"])
def test_task_on_a_user_onnx_gates_on_its_metric(kind, request, shapes, tmp_path):
    """`edgekit compress model.onnx --task KIND --data FOLDER`: the trained segmenter / detector
    exported here and handed over as a file, its data a folder of images with mask PNGs / COCO
    JSON; ORT int8 is judged by mIoU / mAP@0.5 against those labels (not top-1), and the manifest
    records the task."""
    from kit.cli import main
    from kit.tasks.shapes import write_shapes

    model = request.getfixturevalue("detector" if kind == "detection" else "segmenter")
    path, data, out = tmp_path / "model.onnx", tmp_path / "shapes", tmp_path / "job"
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=True, input_names=["image"],
                      output_names=["out"], verbose=False)
    write_shapes(shapes[1], data)  # 32 unseen images: images/*.png, masks/*.png, annotations.json, labels/*.txt
    post = ["--postprocess", "kit.tasks.detect:postprocess"] if kind == "detection" else []  # the built-in, by path
    assert main(["compress", str(path), "--recipe", "x86-64-int8-ort", "--data", str(data), "--task", kind, *post,
                 "--out", str(out), "--set", "compress.0.max_samples=8", "--no-cache"]) == 0
    metric = {"detection": "kit.tasks.metrics:map50", "segmentation": "kit.tasks.metrics:miou"}[kind]
    report = json.loads((out / "report.json").read_text())
    base, art = report["baseline"]["metric"], report["artifact"]["metric"]
    assert base["name"] == art["name"] == metric and "top1" not in report["artifact"] and "top1" not in report["baseline"]
    assert base["value"] > 0.5 and abs(base["value"] - art["value"]) <= 0.05  # the fp32 file against the masks
    gate = report["artifact_gate"]
    assert gate["basis"] == f"metric:{metric}" and gate["passed"] and gate["checks"][0]["metric"] == "metric_drop"
    assert report["artifact"]["file"].endswith(".onnx") and report["steps"][-1]["method"] == "ort_quantize"
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["task"]["kind"] == kind and manifest["task"]["metric"] == metric
    if kind == "detection":  # boxes scaled to the graph's input size; the postprocess recorded as given
        assert manifest["task"]["params"]["image_size"] == SIZE
        assert manifest["task"]["postprocess"] == "kit.tasks.detect:postprocess"
    assert manifest["task"]["baseline"] == pytest.approx(base["value"]) and manifest["task"]["output"].startswith("[N, ")
