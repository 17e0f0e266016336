"""Foundation: data, the demo pipeline end to end, the CLI's error contract, the agent's JSON."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from kit.data import load_data, load_digits, load_npz
from kit.errors import EdgeKitError


def test_digits_splits_are_disjoint_real_images():
    s = load_digits(image_size=16, seed=0)
    assert s.train.x.shape[1:] == (1, 16, 16) and s.train.x.dtype == np.float32
    assert len(s.train) + len(s.calib) + len(s.test) == 1797
    assert 0.0 <= s.train.x.min() and s.train.x.max() <= 1.0 + 1e-6
    assert set(np.unique(s.test.y)) == set(range(10))
    # no image appears in two splits
    train_keys = {x.tobytes() for x in s.train.x}
    assert not any(x.tobytes() in train_keys for x in s.test.x)


def test_npz_loader_and_its_errors(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, size=(40, 12, 12)).astype(np.uint8)
    y = np.arange(40) % 4
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    s = load_npz(tmp_path / "mine.npz", image_size=8)
    assert s.train.x.shape[1:] == (1, 8, 8) and s.num_classes == 4 and s.train.x.max() <= 1.0
    np.savez(tmp_path / "nox.npz", images=x)
    with pytest.raises(EdgeKitError, match="no array named 'x'"):
        load_npz(tmp_path / "nox.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EdgeKitError, match="cannot read as .npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(EdgeKitError, match="no such file or folder"):
        load_data(str(tmp_path / "missing"))


def test_demo_runs_the_whole_job(tmp_path):
    from kit.pipeline.demo import DemoConfig, run_demo

    seen = []
    cfg = DemoConfig(out=tmp_path / "out", image_size=16, teacher_epochs=3, student_epochs=3, width_mult=0.35, runs=20)
    result = run_demo(cfg, progress=lambda label, done, total: seen.append(label))
    out = tmp_path / "out"
    for variant in ("student-fp32-pte", "student-int8-pte", "student-fp32-onnx", "student-int8-onnx"):
        bundle = out / "bundles" / variant
        assert (bundle / "manifest.json").is_file()
    assert list((out / "bundles").glob("*int8-pte/model.pte")) and list((out / "bundles").glob("*int8-onnx/model.onnx"))
    with sqlite3.connect(out / "results.db") as db:
        rows = db.execute("SELECT p50_ms, accuracy, reference_passed FROM measurements").fetchall()
    assert len(rows) == 4
    assert all(p50 > 0 and acc is not None and 0 <= acc <= 1 and ok == 1 for p50, acc, ok in rows)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "student-int8-pte" in html
    by_name = {v.variant: v for v in result.variants}
    # the teacher learns digits for real; the int8 artifacts stay close to the fp32 student
    assert by_name["teacher-fp32"].accuracy > 0.8
    for v in ("student-int8-pte", "student-int8-onnx"):
        assert abs(by_name[v].accuracy - by_name["student-fp32"].accuracy) < 0.1
    assert {"train", "distill", "bench"} <= set(seen)


def _edgekit(*args, **kw):
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=300, **kw)


def test_cli_unknown_option_value_is_one_line():
    r = _edgekit("demo", "--image-size", "huge")
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "image-size" in lines[0] and "Traceback" not in r.stderr


def test_cli_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = _edgekit("demo", "--out", str(blocker / "out"))
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip() and "cpuinfo" not in l]
    assert lines == [lines[0]] and "output folder" in lines[0] and "--out" in lines[0]
    assert "Traceback" not in r.stderr
    r = _edgekit("--verbose", "demo", "--out", str(blocker / "out"))
    assert "Traceback" in r.stderr


def test_agent_refuses_a_corrupt_model(pte_bundle, tmp_path):
    import shutil

    from kit.devices import BenchOptions, LocalDevice, bench

    bad = tmp_path / "bad"
    shutil.copytree(pte_bundle.path, bad)
    data = bytearray((bad / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.pte").write_bytes(bytes(data))
    from kit.package.bundle import Bundle

    with pytest.raises(EdgeKitError, match="hash"):
        bench(LocalDevice(), Bundle.load(bad), BenchOptions(runs=5))


def test_agent_json_schema(onnx_bundle):
    from kit.devices import LocalDevice

    doc = LocalDevice().run_agent(["bench", "--bundle", str(onnx_bundle.path), "--opts", json.dumps({"runs": 10})])
    assert doc["schema_version"] == 1 and doc["ok"] is True and doc["verb"] == "bench"
    r = doc["result"]
    lat = r["latency"]
    assert lat["runs"] == 10 and len(r["samples_ms"]) == 10
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert r["reference_check"]["passed"] is True and r["load_ms"] > 0 and r["peak_rss_mb"] > 0
    assert r["power"]["available"] is False and r["power"]["reason"]
    err = LocalDevice().run_agent(["bench", "--bundle", "/nonexistent"])
    assert err["ok"] is False and err["error"]["code"] and err["error"]["message"]


def test_training_learns_digits(tiny_model, digits16):
    """The shared fixture model is really trained (tests that quantize or prune it rely on that)."""
    from kit.evaluate import accuracy, torch_predictor

    assert accuracy(torch_predictor(tiny_model), digits16.test) > 0.7
