"""A user's own .onnx file (issue #15, item 4): exported here from a small trained torch CNN with a
dynamic batch axis, then handed over as a file only. `edgekit compress model.onnx --recipe
x86-64-int8-ort` quantizes it with ORT static int8 (auto calibration, graph weight/bias
correction), gates it, packages it, and `edgekit bench` (local) and `edgekit rollout` (real sshd
devices on 127.0.0.1) take the bundle like any other. Bad input is one line each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def user_onnx(tiny_model, digits16, tmp_path_factory):
    """(model.onnx, data.npz): the file a user brings (graph input 'image' with a dynamic batch dim
    'batch') and their data as an .npz whose array is named after the graph input."""
    import onnx
    import torch

    root = tmp_path_factory.mktemp("user-onnx")
    path = root / "model.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(tiny_model.eval(), (torch.zeros(2, 1, 16, 16),), str(path), dynamo=True, input_names=["image"],
                      output_names=["logits"], dynamic_shapes={"x": {0: batch}}, verbose=False)
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 16, 16], dims  # the dynamic batch is really there
    x = np.concatenate([digits16.train.x, digits16.calib.x, digits16.test.x])[:400]
    y = np.concatenate([digits16.train.y, digits16.calib.y, digits16.test.y])[:400]
    data = root / "data.npz"
    np.savez(data, image=(x * 255).round().astype(np.uint8), y=y)
    return path, data


def _run(capsys, *argv):
    from kit.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.startswith("edgekit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def int8_build(user_onnx, tmp_path_factory):
    """`edgekit compress model.onnx --recipe x86-64-int8-ort --data data.npz` once: (rc, stderr, out dir, args)."""
    import contextlib
    import io
    import os

    from kit.cli import main

    model, data = user_onnx
    root = tmp_path_factory.mktemp("int8")
    saved = os.environ.get("EDGEKIT_CACHE")
    os.environ["EDGEKIT_CACHE"] = str(root / "cache")
    out = root / "out"
    args = ["compress", str(model), "--recipe", "x86-64-int8-ort", "--data", str(data), "--out", str(out),
            "--name", "useronnx", "--budget-top1-drop", "4", "--budget-sqnr-db", "20"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(args)
        yield rc, err.getvalue(), out, args
    finally:
        if saved is None:
            os.environ.pop("EDGEKIT_CACHE", None)
        else:
            os.environ["EDGEKIT_CACHE"] = saved


def test_user_onnx_compress_package_bench(user_onnx, int8_build, tmp_path, capsys, monkeypatch):
    import hashlib

    import onnx

    from kit.package.verify import verify

    model, _ = user_onnx
    rc, err, out, args = int8_build
    assert rc == 0, err
    assert "note: input 'image': dynamic batch dim 'batch' pinned to 1" in err  # the notice
    report = json.loads((out / "report.json").read_text())
    assert report["refused"] is False and report["artifact_gate"]["passed"]
    assert any("pinned to 1" in n for n in report["notes"])
    step = report["steps"][0]
    assert step["method"] == "ort_quantize" and step["info"]["weight_correction"]["bias_corrected"] == 3
    assert step["info"]["activation_ranges"]["chosen"]["observer"] in ("percentile", "minmax")  # auto calibration ran
    assert report["baseline"]["top1"] > 0.8  # a trained model: the int8 comparison means something
    assert float(report["artifact"]["agreement"]["sqnr_db"]) >= 20
    assert report["artifact"]["top1"] >= report["baseline"]["top1"] - 0.04
    assert not (out / "source-pinned.onnx").exists()
    # The bundle: a QDQ int8 graph, batch 1, the graph's own names, signed, source recorded.
    bundle = out / "bundle"
    graph = onnx.load(str(bundle / "model.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"][0]["name"] == "image" and manifest["inputs"][0]["shape"] == [1, 1, 16, 16]
    assert manifest["compression"]["source_onnx"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert verify(bundle).model_sha256 == manifest["model"]["sha256"]  # signature and files check out
    # The same run again is served from the build cache.
    monkeypatch.setenv("EDGEKIT_CACHE", str(out.parent / "cache"))
    again = out.parent / "again"
    rc, _, err = _run(capsys, *[a if a != str(out) else again for a in args])
    assert rc == 0 and json.loads((again / "report.json").read_text()).get("from_cache") is True, err
    # bench on this machine, like any bundle.
    monkeypatch.setenv("EDGEKIT_RESULTS", str(tmp_path / "results.db"))
    rc, stdout, err = _run(capsys, "bench", bundle, "--device", "local", "--runs", "3", "--warmup", "1", "--json")
    assert rc == 0, err
    m = json.loads(stdout)["measurement"]
    assert m["reference_passed"] is True and m["runtime"] == "onnxruntime" and m["bundle_id"] == manifest["bundle_id"]
    assert m["runs"] == 3 and m["p50_ms"] > 0


@pytest.mark.timeout(600)
def test_user_onnx_rollout_to_sshd_devices(int8_build, fleet_sshd, tmp_path, capsys, monkeypatch):
    from tests.fixtures_fleet import current_id

    rc, err, out, _ = int8_build
    assert rc == 0, err
    bundle = out / "bundle"
    bundle_id = json.loads((bundle / "manifest.json").read_text())["bundle_id"]
    monkeypatch.setenv("EDGEKIT_RESULTS", str(tmp_path / "results.db"))
    entries = fleet_sshd(2)
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": {e.name: {**e.to_dict(), "groups": ["lab"]} for e in entries}}))
    rc, stdout, err = _run(capsys, "rollout", bundle, "--group", "lab", "--health-runs", "2", "--inventory", inv,
                           "--heartbeat-timeout-s", "120")  # a loaded CI host is slow, not frozen
    assert rc == 0, err + stdout
    assert "succeeded" in stdout
    assert all(current_id(e, "useronnx") == bundle_id for e in entries)


def test_user_onnx_gate_refuses_and_removes_the_bundle(user_onnx, tmp_path, capsys, monkeypatch):
    model, data = user_onnx
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "over"
    rc, _, err = _run(capsys, "compress", model, "--recipe", "x86-64-int8-ort", "--data", data, "--out", out,
                      "--budget-sqnr-db", "200")
    _one_line_error(rc, err, "refused", "SQNR", "200", "--budget-sqnr-db")
    report = json.loads((out / "report.json").read_text())
    assert report["refused"] is True and report["bundle"] is None and not (out / "bundle").exists()
    assert [c["metric"] for c in report["gate"]["checks"] if not c["passed"]] == ["sqnr_db"]


def test_user_onnx_fp32_recipe_packages_it_unchanged(user_onnx, tmp_path, capsys, monkeypatch):
    """An ORT recipe with no steps ships the user's graph (batch pinned), gated trivially."""
    import onnx

    model, data = user_onnx
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "fp32-ort.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x86-64-fp32-ort", "device": "x86-64", "runtime": "onnxruntime",
                                      "format": "onnx", "compress": [], "budget": {"agreement": 1.0, "sqnr_db": 60}}))
    rc, _, err = _run(capsys, "compress", model, "--recipe", recipe, "--data", data, "--out", tmp_path / "fp32")
    assert rc == 0, err
    report = json.loads((tmp_path / "fp32" / "report.json").read_text())
    assert report["steps"] == [] and report["artifact"]["agreement"]["top1_match"] == 1.0
    assert report["artifact"]["agreement"]["sqnr_db"] in ("inf", float("inf")) or \
        float(report["artifact"]["agreement"]["sqnr_db"]) > 100
    shipped, given = onnx.load(str(tmp_path / "fp32" / "bundle" / "model.onnx")), onnx.load(str(model))
    assert [n.op_type for n in shipped.graph.node] == [n.op_type for n in given.graph.node]
    assert [i.SerializeToString() for i in shipped.graph.initializer] == [i.SerializeToString() for i in given.graph.initializer]


def test_user_onnx_bad_input_is_one_line(user_onnx, tmp_path, capsys):
    model, data = user_onnx
    base = ["--data", data, "--out", tmp_path / "x"]
    # an ExecuTorch recipe: the PyTorch model is needed
    rc, _, err = _run(capsys, "compress", model, "--recipe", "x86-64-int8", *base)
    _one_line_error(rc, err, "ExecuTorch needs the PyTorch model", "model.onnx")
    # a step that changes torch weights, in an ORT recipe
    recipe = tmp_path / "prune-ort.yaml"
    recipe.write_text(yaml.safe_dump({"name": "prune-ort", "device": "x86-64", "runtime": "onnxruntime",
                                      "compress": [{"method": "prune", "amount": 0.5}, {"method": "ort_quantize"}]}))
    rc, _, err = _run(capsys, "compress", model, "--recipe", recipe, *base)
    _one_line_error(rc, err, "step 0 (prune) needs the PyTorch model")
    # npz arrays not named after the graph input
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((20, 1, 16, 16), np.uint8))
    rc, _, err = _run(capsys, "compress", model, "--recipe", "x86-64-int8-ort", "--data", wrong, "--out", tmp_path / "x")
    _one_line_error(rc, err, "wrong.npz", "'image'", "[1, 1, 16, 16]", "pixels")
    # data whose shape does not fit the graph input (3-channel photos for a 1-channel model)
    rc, _, err = _run(capsys, "compress", model, "--recipe", "x86-64-int8-ort", "--data", "photos", "--out", tmp_path / "x")
    _one_line_error(rc, err, "photos", "samples of shape [3, 16, 16]", "'image'", "[1, 1, 16, 16]")
    # not an ONNX file at all
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(512))
    rc, _, err = _run(capsys, "compress", garbage, "--recipe", "x86-64-int8-ort", *base)
    _one_line_error(rc, err, "garbage.onnx", "not an ONNX model")


def test_dynamic_height_width_pinned_or_refused_naming_the_flag(tmp_path):
    import torch

    from kit.errors import EdgeKitError
    from kit.onnx_model import load_onnx_model, pin_dims

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    path = tmp_path / "dyn.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=4, max=512), 3: torch.export.Dim("w", min=4, max=512)}
    torch.onnx.export(Net().eval(), (torch.zeros(2, 3, 20, 20),), str(path), dynamo=True, input_names=["img"],
                      dynamic_shapes={"x": dims}, verbose=False)
    m = load_onnx_model(path)
    assert [d for _, _, d in m.dynamic] == ["batch", "h", "w"]
    with pytest.raises(EdgeKitError, match=r"dynamic height 'h'.*--image-size N"):
        pin_dims(m, tmp_path / "p.onnx", image_size=None)
    pinned = pin_dims(m, tmp_path / "p.onnx", image_size=24)
    assert pinned.input["shape"] == [1, 3, 24, 24] and pinned.source == path and len(pinned.notes) == 3
    out = pinned.predictor()(np.zeros((1, 3, 24, 24), np.float32))
    assert out.shape == (1, 4)


def test_user_onnx_ort_format_recipe(user_onnx, tmp_path, capsys, monkeypatch):
    """A recipe with format ort ships the int8 graph as ORT's .ort plus its operator config."""
    model, data = user_onnx
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    rc, _, err = _run(capsys, "compress", model, "--recipe", "android-arm64-ort", "--data", data, "--out", tmp_path / "ort",
                      "--budget-top1-drop", "5")
    assert rc == 0, err
    files = {p.name for p in (tmp_path / "ort" / "bundle").iterdir()}
    assert {"model.ort", "required_operators.config"} <= files
    report = json.loads((tmp_path / "ort" / "report.json").read_text())
    assert report["artifact"]["file"].endswith(".ort") and report["artifact_gate"]["passed"]
    assert report["steps"][0]["params"]["activation_type"] == "int8"  # the recipe's ARM choice, kept
