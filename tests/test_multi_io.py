"""Several inputs, several named outputs, end to end on real runtimes: a 2-input / 3-output model
(`(logits, {"mask": ..., "score": ...})`) compressed with PT2E/XNNPACK int8, ORT int8 and fp32,
packaged (.pte, .onnx), verified, and benched on `local` and over a real sshd device with the
Python ExecuTorch bindings, the native runner and ONNX Runtime, every output checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kit.data import Dataset, Splits
from kit.devices.bench import BenchOptions, bench
from kit.devices.local import LocalDevice

NAMES = ["0", "1.mask", "1.score"]
RECIPES = {"x86-64-int8": ["compress.0.calib_batches=1"], "x86-64-int8-ort": ["compress.0.max_samples=16"],
           "x86-64-fp32": []}


class TwoInThreeOut(nn.Module):
    """image (N x 3 x 16 x 16) and a side vector (N x 6) -> (logits, {"mask", "score"})."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.side = nn.Linear(6, 8)
        self.head = nn.Linear(8, 5)
        self.seg = nn.Conv2d(8, 1, 1)
        self.score = nn.Linear(8, 1)

    def forward(self, image, side):
        f = torch.relu(self.conv(image)) * torch.sigmoid(self.side(side))[:, :, None, None]
        pooled = f.mean((2, 3))
        return self.head(pooled), {"mask": self.seg(f), "score": torch.sigmoid(self.score(pooled))}


def _data(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset((rng.standard_normal((n, 3, 16, 16)).astype(np.float32),
                    rng.standard_normal((n, 6)).astype(np.float32)), None)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TwoInThreeOut().eval()


@pytest.fixture(scope="module")
def splits():
    return Splits(train=_data(16, 0), calib=_data(16, 1), test=_data(12, 2), num_classes=0, name="two-in")


@pytest.fixture(scope="module")
def builds(model, splits, tmp_path_factory):
    from kit.pipeline.build import build
    from kit.recipes.loader import load_recipe

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("multi-io")
    return {name: build(load_recipe(name, ["input.image_size=16", *extra]), model, splits, out / name,
                        name=f"two-in-{name}", cache=False)
            for name, extra in RECIPES.items()}


# --- the contract: names, datasets, predictors, agreement ---------------------------------------

def test_outputs_are_flattened_and_named_by_their_paths(model, splits):
    from kit.evaluate import outputs, torch_predictor
    from kit.io import flatten_outputs, output_names

    x = splits.test.head(4).x
    assert isinstance(x, tuple) and [a.shape[0] for a in x] == [4, 4] and len(splits.test) == 12
    assert [n for n, _ in flatten_outputs({"a": {"b": 1}, "c": (2, 3)})] == ["a.b", "c.0", "c.1"]
    assert output_names(model, x) == NAMES and [n for n, _ in flatten_outputs(torch.zeros(2))] == ["output"]
    batches = list(splits.test.batches(5))
    assert [len(b[0][1]) for b in batches] == [5, 5, 2] and all(isinstance(b[0], tuple) for b in batches)
    out = outputs(torch_predictor(model), splits.test, 5)
    assert out.names == NAMES and [o.shape for o in out] == [(12, 5), (12, 1, 16, 16), (12, 1)]
    assert splits.input_shapes == [(1, 3, 16, 16), (1, 6)] and splits.input_shape == (1, 3, 16, 16)


def test_agreement_reports_every_output_and_the_worst_sqnr_gates():
    from kit.compress.gate import judge
    from kit.evaluate import agreement
    from kit.io import Outputs
    from kit.recipes.schema import Budget

    rng = np.random.default_rng(0)
    ref = Outputs([rng.standard_normal((20, 4)), rng.standard_normal((20, 1, 3, 3))], ["logits", "mask"])
    other = Outputs([ref[0] + 1e-4, ref[1] + 0.3 * rng.standard_normal(ref[1].shape)])
    a = agreement(ref, other)
    rows = {r["name"]: r for r in a.per_output}
    assert set(rows) == {"logits", "mask"} and rows["mask"]["top1_match"] is None
    assert a.sqnr_db == rows["mask"]["sqnr_db"] < 15 < rows["logits"]["sqnr_db"] and a.top1_match == 1.0
    gate = judge({"agreement": agreement(ref, ref).to_dict()}, {"agreement": a.to_dict()}, Budget(sqnr_db=20.0), samples=20)
    assert not gate.passed  # the floor applies to the worst output, not the first
    single = agreement(ref[0], other[0]).to_dict()
    assert set(single) == {"top1_match", "sqnr_db", "max_abs_err"}  # single output: the fields as before


def test_npz_named_arrays_become_a_multi_input_dataset(tmp_path):
    from kit.data import load_npz
    from kit.errors import EdgeKitError

    rng = np.random.default_rng(0)
    p = tmp_path / "two.npz"
    np.savez(p, side=rng.standard_normal((40, 6)), image=rng.random((40, 3, 16, 16)), y=np.arange(40) % 3)
    s = load_npz(p, input_names=["image", "side"])  # forward()'s order, not the file's
    assert s.train.multi_input and s.input_shapes == [(1, 3, 16, 16), (1, 6)] and s.num_classes == 3
    assert s.train.x[0].dtype == np.float32 and len(s.train) + len(s.calib) + len(s.test) == 40
    assert load_npz(p).input_shapes == [(1, 6), (1, 3, 16, 16)]  # no signature known: the file's order
    with pytest.raises(EdgeKitError, match="no array named 'mask'"):
        load_npz(p, input_names=["image", "mask"])
    np.savez(tmp_path / "bad.npz", a=np.zeros((40, 2)), b=np.zeros((39, 2)))
    with pytest.raises(EdgeKitError, match="'b' has 39 samples"):
        load_npz(tmp_path / "bad.npz")


# --- compress -> package -> verify ----------------------------------------------------------------

@pytest.mark.parametrize("recipe", list(RECIPES))
def test_build_compares_every_output_and_the_manifest_lists_them(recipe, builds):
    from kit.package import verify

    b = builds[recipe]
    assert b.gate_passed, b.report["gate"]
    agree = b.report["artifact"]["agreement"]
    assert [r["name"] for r in agree["per_output"]] == NAMES
    assert agree["sqnr_db"] == min(r["sqnr_db"] for r in agree["per_output"])
    if recipe != "x86-64-fp32":  # int8 changes every output a little, and each is measured
        assert all(15 < r["sqnr_db"] < 80 for r in agree["per_output"]), agree
        assert [r["name"] for r in b.report["steps"][-1]["agreement"]["per_output"]] == NAMES
    manifest = json.loads((b.bundle_path / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == NAMES
    assert [o["shape"] for o in manifest["outputs"]] == [[1, 5], [1, 1, 16, 16], [1, 1]]
    assert [i["name"] for i in manifest["inputs"]] == ["image", "side"]
    ref = manifest["reference"]
    assert ref["inputs"] == ["reference_input_0.npy", "reference_input_1.npy"] and "input" not in ref
    assert ref["outputs"] == [f"reference_output_{j}.npy" for j in range(3)] and len(ref["atols"]) == 3
    assert all(f in manifest["files"] for f in ref["inputs"] + ref["outputs"])
    assert verify(b.bundle_path).files == 6


# --- the agent's reference check, every runtime, local and sshd -----------------------------------

def _runs(builds):
    """(bundle, pte_runtime) for every artifact and runtime: the .pte on the Python bindings and the native runner."""
    from kit.package import Bundle

    out = []
    for name, b in builds.items():
        bundle = Bundle.load(b.bundle_path)
        out += [(bundle, r) for r in (("python", "native") if bundle.runtime == "executorch" else ("auto",))]
    return out


def _check_all_outputs(m, label):
    check = m.raw["reference_check"]
    assert m.reference_passed and check["passed"], (label, check)
    assert [r["name"] for r in check["per_output"]] == NAMES and all(r["passed"] for r in check["per_output"]), check
    assert m.raw["input_shapes"] == [[1, 3, 16, 16], [1, 6]] and m.runs >= 3 and m.p50_ms > 0


@pytest.fixture(scope="module")
def native_runner():
    from kit.native import build_runner

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (Debian package g++; .ci/testbed-deps installs it)")
    return build_runner()


def test_local_bench_checks_every_output_on_every_runtime(builds, native_runner):
    seen = set()
    for bundle, pte in _runs(builds):
        m = bench(LocalDevice(), bundle, BenchOptions(runs=3, warmup=1, pte_runtime=pte))
        _check_all_outputs(m, (bundle.path, pte))
        seen.add(m.raw.get("pte_runtime") or m.runtime)
    assert seen == {"python", "native", "onnxruntime"}


@pytest.mark.parametrize("recipe,pte", [("x86-64-int8", "python"), ("x86-64-int8", "native"), ("x86-64-int8-ort", "auto")])
def test_sshd_bench_checks_every_output(recipe, pte, builds, native_runner, sshd_device):
    from kit.devices.ssh import Deadlines, SshDevice
    from kit.package import Bundle

    # Generous deadlines: this checks outputs, not liveness (tests/test_fleet_liveness.py does that),
    # and a shared 2-core CI box can starve the agent's heartbeat thread for long stretches.
    slow = Deadlines(connect_s=30, command_s=300, io_idle_s=120, transfer_s=300, heartbeat_timeout_s=300)
    with SshDevice(sshd_device, deadlines=slow) as dev:
        m = bench(dev, Bundle.load(builds[recipe].bundle_path), BenchOptions(runs=3, warmup=1, pte_runtime=pte))
    _check_all_outputs(m, (recipe, pte))
    assert (m.raw.get("pte_runtime") or m.runtime) == {"python": "python", "native": "native"}.get(pte, "onnxruntime")


def test_a_wrong_reference_output_fails_by_name_on_both_pte_runtimes(builds, native_runner, tmp_path):
    """A bundle whose third reference output is off: the check fails and names that output."""
    from kit.package import Bundle
    from kit.package.bundle import write_bundle

    src = builds["x86-64-int8"].bundle_path
    man = json.loads((src / "manifest.json").read_text())
    ins = [np.load(src / f) for f in man["reference"]["inputs"]]
    outs = [np.load(src / f) for f in man["reference"]["outputs"]]
    outs[2] = outs[2] + 0.5
    bad = write_bundle(tmp_path / "bad", src / "model.pte", "two-in-bad", tuple(ins), outs,
                       runtime=man["runtime"], inputs=man["inputs"], outputs=man["outputs"])
    for pte in ("python", "native"):
        m = bench(LocalDevice(), Bundle.load(bad.path), BenchOptions(runs=2, warmup=0, pte_runtime=pte))
        check = m.raw["reference_check"]
        assert not m.reference_passed and [r["passed"] for r in check["per_output"]] == [True, True, False], check
        assert "1.score" in check["reason"]


def test_single_io_bundle_keeps_its_reference_layout(tmp_path):
    from kit.package.bundle import write_bundle

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    b = write_bundle(tmp_path / "b", model, "one", np.zeros((1, 2), np.float32), np.ones((1, 3), np.float32), sign=False)
    assert set(b.manifest["reference"]) == {"input", "output", "atol", "rtol"}
    assert sorted(p.name for p in Path(b.path).glob("reference_*")) == ["reference_input.npy", "reference_output.npy"]
