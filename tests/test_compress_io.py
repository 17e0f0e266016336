"""Models and data for compression (torchvision:NAME, module:callable, checkpoints, --weights,
MobileNet students; image folders and .npz files) and the `edgekit compress` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kit.errors import EdgeKitError


def test_model_specs_checkpoints_and_weights(tmp_path):
    from kit.models import TeacherCNN, load_model

    tv = load_model("torchvision:mobilenet_v3_small", num_classes=7)
    assert tv(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    user = load_model("kit.models:TeacherCNN", in_channels=1, width=8)
    assert isinstance(user, TeacherCNN)
    whole = tmp_path / "whole.pt"
    torch.save(user, whole)
    assert isinstance(load_model(str(whole)), TeacherCNN)
    state = tmp_path / "state.pt"
    torch.manual_seed(1)
    trained = TeacherCNN(in_channels=1, width=8)
    torch.save(trained.state_dict(), state)
    loaded = load_model("kit.models:TeacherCNN", weights=state, in_channels=1, width=8)
    assert torch.equal(loaded.classifier.weight, trained.classifier.weight)
    for spec, text in [("torchvision:nonet", "no model 'nonet'"), ("kit.models:Nope", "cannot import"),
                       (str(tmp_path / "missing.pt"), "no such file"), (str(state), "state_dict")]:
        with pytest.raises(EdgeKitError) as e:
            load_model(spec)
        assert text in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EdgeKitError) as e:
        load_model("kit.models:TeacherCNN", weights=tmp_path / "nothing.pt")
    assert "no such file" in str(e.value)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_mobilenet_student_width_depth_resolution(arch):
    from kit.evaluate import count_params
    from kit.models import mobilenet_student

    small = mobilenet_student(arch, width_mult=0.25, in_channels=1, stem_stride=1).eval()
    big = mobilenet_student(arch, width_mult=0.75, in_channels=1, stem_stride=1).eval()
    assert count_params(small) < count_params(big)
    assert small(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    if arch == "mobilenet_v2":
        shallow = mobilenet_student(arch, width_mult=0.25, depth_mult=0.5, in_channels=1)
        assert count_params(shallow) < count_params(small)
    with pytest.raises(EdgeKitError):
        mobilenet_student("resnet", 0.5)
    with pytest.raises(EdgeKitError):
        mobilenet_student(arch, width_mult=5.0)


def test_npz_and_image_folder_loaders(tmp_path):
    from PIL import Image

    from kit.data import load_data

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(40, 12, 12)).astype(np.uint8)
    y = np.arange(40) % 4
    np.savez(tmp_path / "set.npz", x=x, y=y)
    splits = load_data(str(tmp_path / "set.npz"), image_size=16)
    assert splits.train.x.shape[1:] == (1, 16, 16) and splits.num_classes == 4
    assert 0.0 <= splits.train.x.min() and splits.train.x.max() <= 1.0
    assert len(splits.train) + len(splits.calib) + len(splits.test) == 40
    np.savez(tmp_path / "unlabelled.npz", x=x)
    assert load_data(str(tmp_path / "unlabelled.npz"), image_size=12).test.y is None
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(EdgeKitError) as e:
        load_data(str(tmp_path / "bad.npz"))
    assert "no array named 'x'" in str(e.value)

    root = tmp_path / "folder"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, size=(20, 20, 3)).astype(np.uint8)).save(root / c / f"{i}.png")
    splits = load_data(str(root), image_size=16)
    assert splits.train.x.shape[1:] == (3, 16, 16) and splits.num_classes == 2
    with pytest.raises(EdgeKitError):
        load_data(str(tmp_path / "nowhere"))


def test_cli_compress_writes_bundle_and_report(cnn16, tmp_path, capsys):
    from kit.cli import main

    ckpt = tmp_path / "cnn16.pt"
    torch.save(cnn16, ckpt)
    recipe = tmp_path / "prune-ort.yaml"
    recipe.write_text("name: prune-ort\ndevice: x86-64\nruntime: onnxruntime\nformat: onnx\n"
                      "input: {image_size: 16, channels: 1}\n"
                      "compress:\n  - {method: prune, amount: 0.3}\n  - {method: ort_quantize, max_samples: 16}\n"
                      "budget: {top1_drop: 3.0}\n")
    out = tmp_path / "out"
    code = main(["compress", str(ckpt), "--recipe", str(recipe), "--data", "digits", "--out", str(out), "--eval-samples", "120"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert [s["method"] for s in report["steps"]] == ["prune", "ort_quantize"]
    assert report["steps"][0]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert report["artifact"]["bytes"] < report["steps"][1]["info"]["fp32_onnx_bytes"]
    assert report["artifact_gate"]["passed"] and report["refused"] is False
    assert (out / "bundle" / "manifest.json").is_file()
    assert not (out / "model.pt").exists()  # the chain ended in an .onnx: there is no torch model to save
    assert report["baseline"]["macs"] > 0 and report["steps"][0]["params"]["amount"] == 0.3

    # Over budget: refused with one line and exit 2, nothing packaged.
    code = main(["compress", str(ckpt), "--recipe", str(recipe), "--data", "digits", "--out", str(tmp_path / "no"),
                 "--set", "compress.0.amount=0.95", "--set", "budget.top1_drop=0.5", "--eval-samples", "120"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # above it: the progress log on stderr
    assert code == 2 and last.startswith("edgekit: error:") and "refused" in last and "--override-budget" in last
    assert not (tmp_path / "no" / "bundle").exists()


def test_cli_compress_refuses_nan_data_in_one_line(tmp_path, capsys):
    """Calibration data of NaNs used to end in ORT's quantizer (`AssertionError: scale issue`)."""
    from kit.cli import main

    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((20, 1, 16, 16), np.nan, dtype=np.float32), y=np.arange(20) % 2)
    code = main(["compress", "tests.conftest:TinyNet", "--data", str(nan), "--recipe", "x86-64-int8-ort",
                 "--out", str(tmp_path / "out"), "--image-size", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1, err
    assert err[0].startswith(f"edgekit: error: {nan}: x has 5120 non-finite values (5120 NaN")
    assert not (tmp_path / "out" / "bundle").exists()


def test_cli_image_size_flag_wins_and_preprocess_reaches_the_bundle(tmp_path, capsys):
    """x86-64-fp32 says input.image_size 32; --image-size 16 sets it and loads the data at 16."""
    from kit.cli import main
    from kit.data import load_digits

    out = tmp_path / "out"
    code = main(["compress", "tests.conftest:TinyNet", "--recipe", "x86-64-fp32", "--data", "digits", "--image-size", "16",
                 "--mean", "0.5", "--std", "0.25", "--out", str(out), "--eval-samples", "60", "--no-cache"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "custom preprocessing, the command line" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["input"]["image_size"] == 16 and report["recipe"]["input"]["preprocess"]["mean"] == [0.5]
    m = json.loads((out / "bundle" / "manifest.json").read_text())
    assert m["inputs"][0]["shape"] == [1, 1, 16, 16]
    assert m["preprocessing"]["mean"] == [0.5] and m["preprocessing"]["std"] == [0.25] and m["preprocessing"]["resize"] == "resize"
    ref = np.load(out / "bundle" / "reference_input.npy")  # the preprocessed first test sample
    assert np.allclose(ref, (load_digits(16).test.x[:1] - 0.5) / 0.25, atol=1e-6)
    assert main(["verify", str(out / "bundle")]) == 0
    assert "mean [0.5] std [0.25]" in capsys.readouterr().out

    code = main(["compress", "tests.conftest:TinyNet", "--recipe", "x86-64-fp32", "--image-size", "16",
                 "--set", "input.image_size=24", "--out", str(tmp_path / "no")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--image-size 16 and --set input.image_size=24 disagree" in err[0]
