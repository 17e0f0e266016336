"""`edgekit package` -> `edgekit verify` -> the device agent loads and runs to the reference output,
for the executorch, onnx and ort targets; keys; the delegation summary and its warning."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch

from kit.cli import main


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(tiny_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cli_bundles(tiny_checkpoint, tmp_path_factory, edgekit_signing_key) -> dict[str, Path]:
    """One bundle per target, made by the CLI from the trained TinyNet (the ort one as a single .tar)."""
    out = tmp_path_factory.mktemp("cli-bundles")
    made = {}
    for target, dest, flags in (("executorch", out / "pte", []), ("onnx", out / "onnx", ["--optimize", "basic"]),
                                ("ort", out / "tiny-ort.tar", ["--expires", "30d"])):
        rc = main(["package", "tests.conftest:TinyNet", "--weights", str(tiny_checkpoint), "--target", target,
                   "--out", str(dest), "--data", "digits", "--input-shape", "1,1,16,16", "--name", "tiny-cli", *flags])
        assert rc == 0, target
        made[target] = dest
    return made


@pytest.mark.parametrize("target", ["executorch", "onnx", "ort"])
def test_package_verify_and_run_on_the_agent(cli_bundles, target, capsys):
    from kit.devices import BenchOptions, LocalDevice, bench
    from kit.package import Bundle

    path = cli_bundles[target]
    assert main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {path}")
    bundle = Bundle.load(path)
    m = bundle.manifest
    assert m["schema_version"] == 1 and m["name"] == "tiny-cli" and len(m["bundle_id"]) == 16
    assert m["inputs"][0]["shape"] == [1, 1, 16, 16] and m["outputs"][0]["shape"] == [1, 10]
    assert m["preprocessing"]["data"] == "digits16" and m["runtime"]["min_version"]
    assert m["model"]["sha256"] == m["files"][m["model"]["file"]]["sha256"]
    measurement = bench(LocalDevice(), bundle, BenchOptions(runs=5, warmup=1))
    assert measurement.reference_passed is True
    assert measurement.raw["verified"]["signature"] == m["signer"]
    if target == "executorch":
        d = m["delegation"]
        assert d["delegated_subgraphs"] >= 1 and d["coverage"] == 1.0 and "warnings" not in m
    if target == "onnx":
        assert m["ort"]["optimization"] == "basic" and m["runtime"]["format"] == "onnx"
    if target == "ort":
        assert bundle.is_tar and m["runtime"]["format"] == "ort" and m["expires"]
        assert m["ort"]["ops_config"] == "required_operators.config" and "required_operators.config" in m["files"]


def test_ort_bundle_keeps_the_required_operators_config(cli_bundles, tmp_path):
    from kit.package import verify

    # verify() extracts into a temporary folder; extract a copy here to read the config.
    from device_agents.bundle import verify_bundle
    from kit.package.signing import public_key_paths

    v = verify(cli_bundles["ort"])
    path, _ = verify_bundle(str(cli_bundles["ort"]), home=str(tmp_path), trust_dirs=[str(p) for p in public_key_paths()])
    config = (Path(path) / "required_operators.config").read_text()
    assert "ai.onnx;" in config and "Conv" in config and v.format == "ort"


def test_keys_init_permissions_and_refusal(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEKIT_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("EDGEKIT_SIGNING_KEY")
    assert main(["keys", "init"]) == 0
    key = tmp_path / "cfg" / "keys" / "signing.ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert (tmp_path / "cfg" / "keys" / "signing.ed25519.pub").read_text().startswith("ssh-ed25519 ")
    first = key.read_bytes()
    capsys.readouterr()
    assert main(["keys", "init"]) == 2 and "--force" in capsys.readouterr().err
    assert key.read_bytes() == first
    from kit.package.signing import public_key_paths

    assert public_key_paths() == [tmp_path / "cfg" / "keys" / "signing.ed25519.pub"]


def test_package_without_a_key_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEKIT_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("EDGEKIT_SIGNING_KEY")
    assert main(["package", "teacher", "--target", "onnx", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "edgekit keys init" in err[0]
    assert not (tmp_path / "b").exists()


def test_mostly_undelegated_model_gets_a_warning(tmp_path):
    import numpy as np

    from kit.package import package

    class Scan(torch.nn.Module):  # cumsum and flip have no XNNPACK kernels: portable fallbacks
        def forward(self, x):
            return torch.cumsum(torch.sin(x), -1).flip(-1).cumsum(-2) * 2

    bundle = package(Scan(), "executorch", tmp_path / "scan", np.ones((1, 1, 4, 4), np.float32), name="scan")
    d = bundle.manifest["delegation"]
    assert d["coverage"] < 0.5 and "aten_cumsum_default" in d["non_delegated_ops"]
    assert bundle.warnings and "slow on the device" in bundle.warnings[0]
    assert bundle.manifest["warnings"] == bundle.warnings


def test_manifest_is_canonical_and_signed_bytes_are_the_file(onnx_bundle):
    from kit.package.signing import canonical_json

    raw = (onnx_bundle.path / "manifest.json").read_bytes()
    assert raw == canonical_json(json.loads(raw))
    sig = json.loads((onnx_bundle.path / "manifest.sig").read_bytes())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == onnx_bundle.manifest["signer"]


@pytest.mark.parametrize("args, needle", [
    (["teacher", "--target", "onnx", "--expires", "tomorrow"], "30d"),
    (["teacher", "--target", "tflite"], "executorch, onnx, ort"),
    (["teacher", "--target", "onnx", "--optimize", "all"], "basic, extended"),
    (["teacher", "--target", "onnx", "--input-shape", "1,x"], "1,1,32,32"),
    (["model.onnx", "--target", "executorch"], "expects .pte"),
])
def test_bad_package_arguments_are_one_line(args, needle, tmp_path, capsys):
    assert main(["package", *args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "b").exists()


def test_torchvision_model_defaults_to_imagenet_and_verify_shows_it(tmp_path, capsys):
    """The reference input is the preprocessed first test crop; verify prints and --json carries
    the preprocessing; the agent's reference check runs on it."""
    import numpy as np

    from kit.devices import BenchOptions, LocalDevice, bench
    from kit.package import Bundle
    from kit.preprocess import Preprocess

    rgb = np.random.default_rng(0).integers(0, 256, size=(20, 40, 48, 3), dtype=np.uint8)  # channels last
    np.savez(tmp_path / "rgb.npz", x=rgb)
    out = tmp_path / "tv"
    assert main(["package", "torchvision:mobilenet_v3_small", "--target", "onnx", "--out", str(out),
                 "--data", str(tmp_path / "rgb.npz"), "--input-shape", "1,3,32,32", "--resize", "shorter_crop"]) == 0
    captured = capsys.readouterr()
    assert "preprocess: imagenet (the default for torchvision models; --preprocess none turns it off)" in captured.err
    m = Bundle.load(out).manifest
    pre = m["preprocessing"]
    assert pre["preset"] == "imagenet" and pre["mean"] == [0.485, 0.456, 0.406] and pre["resize"] == "shorter_crop"
    assert pre["layout"] == "NCHW" and pre["channels"] == 3 and pre["image_size"] == 32 and pre["data"] == "rgb"
    ref = np.load(out / "reference_input.npy")
    expected = Preprocess.from_spec({"preset": "imagenet", "resize": "shorter_crop"}).apply(rgb, 32)
    assert any(np.allclose(ref[0], e, atol=1e-5) for e in expected) and ref.min() < -1.0

    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "resize shorter_crop 0.875" in text and "std [0.229, 0.224, 0.225] (imagenet)" in text
    assert main(["verify", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["preprocessing"] == pre
    assert bench(LocalDevice(), Bundle.load(out), BenchOptions(runs=2, warmup=1)).reference_passed is True

    # --preprocess none is heard; a bad preset is one line
    assert main(["package", "torchvision:mobilenet_v3_small", "--target", "onnx", "--out", str(tmp_path / "plain"),
                 "--input-shape", "1,3,32,32", "--preprocess", "none"]) == 0
    assert Bundle.load(tmp_path / "plain").manifest["preprocessing"]["mean"] is None
    capsys.readouterr()
    assert main(["package", "teacher", "--target", "onnx", "--out", str(tmp_path / "b"), "--preprocess", "imagenett"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preprocess 'imagenett'" in err[0]
