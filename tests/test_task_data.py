"""Task data (kit.tasks.data): the shapes writer's COCO JSON, YOLO txt and mask PNG folders read
back as written; object labels slice and hash like any labels; a bad label file is one line naming
it; `edgekit compress --task detection` runs on such a folder as a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kit.errors import EdgeKitError


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from kit.tasks.shapes import make_shapes, write_shapes

    shapes = make_shapes(12, 64, seed=5)
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes(shapes, folder)
    return shapes, folder


def _same_targets(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["boxes"], w["boxes"], atol=1e-3)
        assert g["labels"].dtype == np.int64 and list(g["labels"]) == list(w["labels"])


def test_loaders_read_back_what_the_writer_wrote(written):
    from kit.tasks.data import load_coco, load_masks, load_unlabelled, load_yolo

    shapes, folder = written
    x, coco = load_coco(folder)
    assert x.shape == shapes.images.shape and x.dtype == np.float32 and np.abs(x - shapes.images).max() <= 1 / 255
    _same_targets(coco, shapes.targets)
    _, yolo = load_yolo(folder)
    _same_targets(yolo, shapes.targets)
    _, masks = load_masks(folder)
    assert masks.dtype == np.int64 and (masks == shapes.masks).all()
    assert load_unlabelled(folder).shape == shapes.images.shape
    # resized on load: boxes scale with the image, masks stay class indices (nearest)
    small, scaled = load_coco(folder, image_size=32)
    assert small.shape[-2:] == (32, 32)
    np.testing.assert_allclose(scaled[0]["boxes"], shapes.targets[0]["boxes"] / 2, atol=1e-3)
    assert set(np.unique(load_masks(folder, image_size=32)[1])) <= {0, 1, 2}


def test_object_labels_slice_and_hash_like_labels(written):
    from kit.cache import hash_arrays
    from kit.splits import class_labels
    from kit.tasks.data import load_task_data

    _, folder = written
    splits = load_task_data("detection", folder)
    assert len(splits.train) + len(splits.calib) + len(splits.test) == 12 and splits.calib.y is None
    head = splits.test.head(2)
    assert len(head.y) == 2 and head.y[0] is splits.test.y[0]
    assert [len(y) for _, y in splits.test.batches(2)][0] == 2
    again = load_task_data("detection", folder)
    assert hash_arrays(splits.test.y) == hash_arrays(again.test.y)  # by content, not by object address
    again.test.y[0]["boxes"][0, 0] += 1
    assert hash_arrays(splits.test.y) != hash_arrays(again.test.y)
    assert not class_labels(splits.test.y) and not class_labels(load_task_data("segmentation", folder).test.y)
    assert class_labels(np.array([0, 1])) and load_task_data("detection", folder / "masks").test.y is None


def test_bad_label_files_are_one_line_naming_the_file(written, tmp_path):
    import shutil

    from kit.tasks.data import load_coco, load_masks, load_yolo

    _, folder = written
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "labels" / "00003.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(EdgeKitError, match=r"00003\.txt:1: expected `class cx cy w h`") as e:
        load_yolo(bad)
    assert "\n" not in str(e.value)
    (bad / "annotations.json").write_text(json.dumps({"images": []}))
    with pytest.raises(EdgeKitError, match=r"annotations\.json: not a COCO annotations file"):
        load_coco(bad)
    (bad / "masks" / "00002.png").unlink()
    with pytest.raises(EdgeKitError, match=r"00002\.png: no mask for image 00002\.png"):
        load_masks(bad)
    (bad / "images" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(EdgeKitError, match=r"00001\.png: cannot read as an image"):
        load_masks(bad)


def _edgekit(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "kit", *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.timeout(1200)
def test_cli_compress_task_detection_on_a_yolo_folder(written, tmp_path):
    import torch

    from kit.tasks.detect import TinyYolo

    shapes, folder = written
    torch.manual_seed(0)
    torch.save(TinyYolo().state_dict(), tmp_path / "det.pt")
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    for f in (folder / "images").iterdir():
        (yolo / "images" / f.name).write_bytes(f.read_bytes())
    (yolo / "labels").mkdir()
    for f in (folder / "labels").iterdir():
        (yolo / "labels" / f.name).write_text(f.read_text())
    base = ["compress", "kit.tasks.detect:TinyYolo", "--weights", tmp_path / "det.pt", "--recipe", "x86-64-int8-ort",
            "--data", yolo, "--image-size", 64, "--task", "detection", "--set", "compress.0.max_samples=4", "--no-cache"]
    args = [*base, "--postprocess", "kit.tasks.detect:postprocess"]
    proc = _edgekit(*args, "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["artifact"]["metric"]["name"] == "kit.tasks.metrics:map50"
    assert report["artifact_gate"]["basis"] == "metric:kit.tasks.metrics:map50"
    task = json.loads((tmp_path / "out" / "bundle" / "manifest.json").read_text())["task"]
    assert task["kind"] == "detection" and task["postprocess"] == "kit.tasks.detect:postprocess"
    assert task["params"]["image_size"] == 64 and task["label"] == "mAP@0.5"
    # a bad label file: one line naming it, no traceback, nothing built
    (yolo / "labels" / "00004.txt").write_text("zero 0.5 0.5 0.1 0.1\n")
    proc = _edgekit(*args, "--out", tmp_path / "bad", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    line = [s for s in proc.stderr.splitlines() if "00004.txt" in s]
    assert len(line) == 1 and "00004.txt:1: expected `class cx cy w h`" in line[0]
    bad_post = _edgekit(*base, "--postprocess", "nosuch.module:fn", "--out", tmp_path / "bad2", cwd=tmp_path)
    assert bad_post.returncode != 0 and "Traceback" not in bad_post.stderr and "nosuch.module:fn" in bad_post.stderr
