"""Recipes: the shipped set loads and validates; bad recipes are refused with file:line, field and
the allowed values; inheritance and --set overrides behave; the CLI lists and shows them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kit.errors import EdgeKitError
from kit.recipes import KNOWN_DEVICES, load_recipe, shipped_dir
from kit.recipes.loader import parse_override

SHIPPED = sorted(shipped_dir().glob("*.yaml"))


def test_shipped_recipes_exist():
    assert len(SHIPPED) >= 8, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.source == str(path)
    # recipes/<device>-<scheme>.yaml, with a comment saying why the choices suit the device
    assert path.stem.startswith(recipe.device + "-"), (path.stem, recipe.device)
    assert recipe.device in KNOWN_DEVICES
    assert path.read_text().lstrip().startswith("#"), f"{path.name}: start with a comment on why it suits the device"
    assert "Why" in path.read_text(), f"{path.name}: say why its choices suit the device"
    assert recipe.description
    # the small-input test profile loads too and really is small
    small = load_recipe(path, recipe.smoke)
    assert small.input.image_size is None or small.input.image_size <= 16
    assert small.bench.runs <= 10


def test_shipped_set_covers_devices_and_schemes():
    recipes = [load_recipe(p) for p in SHIPPED]
    assert {r.device for r in recipes} >= set(KNOWN_DEVICES)
    methods = [[s["method"] for s in r.compress] for r in recipes]
    assert any(any(m.startswith("prune") for m in ms) for ms in methods), "a sparse recipe"
    assert any("distill" in ms for ms in methods), "a distilled-student recipe"
    assert any(len(ms) >= 3 for ms in methods), "a combined chain"
    assert {r.runtime for r in recipes} == {"executorch", "onnxruntime"}
    assert {r.format for r in recipes} == {"pte", "onnx", "ort"}
    jetson = [p for p in SHIPPED if p.stem.startswith("jetson")]
    assert jetson and all("GPU" in p.read_text() for p in jetson)


# --- invalid recipes ----------------------------------------------------------------------------

INVALID = {
    "unknown-key": ("device: x86-64\nruntime: executorch\nthreadz: 2\n",
                    [":3:", "unknown key 'threadz'", "allowed keys:", "threads"]),
    "wrong-type": ("device: x86-64\nruntime: executorch\nthreads: four\n",
                   [":3:", "field 'threads'", "valid integer", "'four'"]),
    "missing-runtime": ("device: x86-64\nthreads: 2\n",
                        ["field 'runtime' is missing", "allowed: executorch, onnxruntime"]),
    "unknown-runtime": ("device: x86-64\nruntime: tflite\n",
                        [":2:", "field 'runtime'", "'executorch' or 'onnxruntime'", "'tflite'"]),
    "format-for-other-runtime": ("device: x86-64\nruntime: executorch\nformat: ort\n",
                                 [":3:", "field 'format'", "allowed with runtime executorch: pte"]),
    "ort-with-executorch-only-method": (
        "device: android-arm64\nruntime: onnxruntime\nformat: ort\ncompress:\n  - method: quantize\n    per_channel: true\n",
        [":5:", "step 1", "'quantize'", "only executorch", "onnxruntime (.ort)", "allowed for onnxruntime:", "ort_quantize"]),
    "pte-with-ort-only-method": (
        "device: x86-64\nruntime: executorch\ncompress:\n  - {method: ort_quantize}\n",
        [":4:", "'ort_quantize'", "only onnxruntime", "allowed for executorch:", "quantize"]),
    "unknown-method": ("device: x86-64\nruntime: executorch\ncompress:\n  - {method: squash}\n",
                       [":4:", "unknown method 'squash'", "allowed:", "quantize"]),
    "unknown-parameter": ("device: x86-64\nruntime: executorch\ncompress:\n  - method: quantize\n    per_chanel: true\n",
                          [":5:", "compress.0.per_chanel", "no parameter 'per_chanel'", "allowed:", "per_channel"]),
    "parameter-wrong-type": ("device: x86-64\nruntime: executorch\ncompress:\n  - method: quantize\n    calib_batches: lots\n",
                             [":5:", "compress.0.calib_batches", "valid integer"]),
    "parameter-out-of-range": ("device: x86-64\nruntime: executorch\ncompress:\n  - method: quantize\n    observer: guess\n",
                               [":4:", "step 1", "observer", "histogram"]),
    "step-not-a-mapping": ("device: x86-64\nruntime: executorch\ncompress:\n  - quantize\n",
                           [":4:", "must be a mapping"]),
    "nested-out-of-range": ("device: x86-64\nruntime: executorch\ninput:\n  image_size: 4\n",
                            [":4:", "field 'input.image_size'", "greater than or equal to 8"]),
    "nested-unknown-key": ("device: x86-64\nruntime: executorch\ninput:\n  size: 32\n",
                           [":4:", "unknown key 'input.size'", "image_size, channels"]),
    "duplicate-key": ("device: x86-64\nruntime: executorch\nthreads: 1\nthreads: 2\n",
                      [":4:", "'threads' appears twice"]),
    "yaml-syntax": ("device: x86-64\nruntime: [executorch\n", ["not valid YAML"]),
    "not-a-mapping": ("- a\n- b\n", [":1:", "mapping"]),
    "bad-device-name": ("device: Raspberry Pi\nruntime: executorch\n", [":1:", "field 'device'"]),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_recipe_is_refused_with_file_line_field(case, tmp_path):
    text, expected = INVALID[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(EdgeKitError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg  # names the file first
    assert "\n" not in msg
    for part in expected:
        assert part in msg, (part, msg)


# --- inheritance ----------------------------------------------------------------------------

def test_base_inheritance_merges_and_errors_point_at_the_right_file(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: x86-64-int8\nthreads: 2\ninput:\n  channels: 1\n")
    r = load_recipe(tmp_path / "mine.yaml")
    base = load_recipe("x86-64-int8")
    assert r.name == "mine" and r.base == "x86-64-int8"
    assert r.threads == 2 and base.threads == 1
    assert r.input.channels == 1 and r.input.image_size == base.input.image_size  # mapping merged key by key
    assert r.compress == base.compress and r.runtime == base.runtime  # inherited
    # a chain of bases, relative to the child's folder, replacing the chain whole
    (tmp_path / "grandchild.yaml").write_text("base: mine.yaml\ncompress: []\n")
    g = load_recipe(tmp_path / "grandchild.yaml")
    assert g.compress == [] and g.threads == 2
    # an error in the child names the child's line
    (tmp_path / "bad-child.yaml").write_text("base: x86-64-int8\n\nbench:\n  runs: 0\n")
    with pytest.raises(EdgeKitError, match=re.escape(f"{tmp_path / 'bad-child.yaml'}:4: field 'bench.runs'")):
        load_recipe(tmp_path / "bad-child.yaml")
    # an error inherited from a base names the base file and its line
    (tmp_path / "bad-base.yaml").write_text("device: x86-64\nruntime: executorch\nthreads: 0\n")
    (tmp_path / "child.yaml").write_text("base: bad-base\ndescription: fine\n")
    with pytest.raises(EdgeKitError, match=re.escape(f"{tmp_path / 'bad-base.yaml'}:3: field 'threads'")):
        load_recipe(tmp_path / "child.yaml")
    # a child that changes the runtime must still pass the method/runtime check
    (tmp_path / "to-ort.yaml").write_text("base: x86-64-int8\nruntime: onnxruntime\nformat: ort\n")
    with pytest.raises(EdgeKitError, match="x86-64-int8.yaml:[0-9]+: step 1 .*'quantize'.*onnxruntime"):
        load_recipe(tmp_path / "to-ort.yaml")


def test_base_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(EdgeKitError, match=r"b.yaml:1: field 'base': inheritance loops \(a.yaml -> b.yaml -> a.yaml\)"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("runtime: executorch\nbase: no-such-recipe\n")
    with pytest.raises(EdgeKitError, match=r"orphan.yaml:2: field 'base'.*no-such-recipe.*choose one of: .*x86-64-fp32"):
        load_recipe(tmp_path / "orphan.yaml")


def test_user_recipe_folder_is_searched(tmp_path, monkeypatch):
    (tmp_path / "my-board-int8.yaml").write_text("base: x86-64-int8\ndevice: my-board\n")
    monkeypatch.setenv("EDGEKIT_RECIPES", str(tmp_path))
    r = load_recipe("my-board-int8")
    assert r.device == "my-board" and r.source == str(tmp_path / "my-board-int8.yaml")
    with pytest.raises(EdgeKitError, match="my-board-int8"):  # the error lists what exists
        load_recipe("nope")


# --- overrides ----------------------------------------------------------------------------------

def test_set_overrides_are_typed_and_validated():
    r = load_recipe("x86-64-int8", ["threads=3", "compress.0.per_channel=false", "budget.top1_drop=0.5",
                                    "input.image_size=24"])
    assert r.threads == 3 and r.compress[0]["per_channel"] is False
    assert r.budget.top1_drop == 0.5 and r.input.image_size == 24
    # one past the end appends a step
    r = load_recipe("x86-64-fp32", ["compress.0={method: quantize, per_channel: false}"])
    assert r.compress == [{"method": "quantize", "per_channel": False}]
    assert parse_override("compress.0.ratio=0.3") == (("compress", 0, "ratio"), 0.3)


@pytest.mark.parametrize("override, expected", [
    ("threads", "expected key=value"),
    ("=3", "key is empty"),
    ("threads=many", "--set threads=many: field 'threads'"),
    ("compress.5.ratio=0.1", "index 5 is out of range"),
    ("colour=red", "--set colour=red: unknown key 'colour'"),
    ("runtime=onnxruntime", "x86-64-fp32.yaml:8: field 'format': format 'pte' cannot run on onnxruntime"),
    ("compress.0.per_chanel=true", "--set compress.0.per_chanel=true: step 1 (compress.0.per_chanel)"),
])
def test_bad_overrides_are_refused(override, expected):
    with pytest.raises(EdgeKitError) as err:
        load_recipe("x86-64-int8", [override])
    assert expected in str(err.value)


# --- CLI ----------------------------------------------------------------------------------------

def _edgekit(*args, **env):
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "250", **env})


def test_cli_recipes_list_and_show(tmp_path):
    listed = _edgekit("recipes", "list")
    assert listed.returncode == 0, listed.stderr
    for p in SHIPPED:
        assert p.stem in listed.stdout
    assert "invalid" not in listed.stdout
    shown = _edgekit("recipes", "show", "raspberry-pi-5-combined", "--set", "threads=2", "--json")
    assert shown.returncode == 0, shown.stderr
    import json

    doc = json.loads(shown.stdout)
    assert doc["threads"] == 2 and [s["method"] for s in doc["compress"]] == ["prune_structured", "distill", "quantize"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: x86-64\nruntime: executorch\nthreadz: 2\n")
    refused = _edgekit("recipes", "show", str(bad))
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"edgekit: error: {bad}:3: unknown key 'threadz'; allowed keys: name, description, " \
                                     "base, device, runtime, format, input, threads, compress, budget, task, bench, smoke"


# --- the registered passes ------------------------------------------------------------------

def test_registry_is_built_from_the_pass_classes_and_recipes_hold_config_objects():
    from kit.compress.prune import Prune
    from kit.compress.quantize import Int8Static
    from kit.compress.registry import METHODS, TERMINAL, parse_chain

    assert set(METHODS) == {"prune", "prune_structured", "distill", "lowrank", "cluster", "quantize",
                            "quantize_dynamic", "qat", "ort_quantize", "ort_quantize_dynamic"}
    for name, cls in METHODS.items():
        assert cls().method == name and set(cls.runtimes) <= {"executorch", "onnxruntime"}
        assert callable(cls.apply) and isinstance(cls.terminal, bool) and isinstance(cls.needs_calibration, bool)
    assert TERMINAL == {"quantize": "executorch", "quantize_dynamic": "executorch", "qat": "executorch",
                        "ort_quantize": "onnxruntime", "ort_quantize_dynamic": "onnxruntime"}
    assert METHODS["quantize"].needs_calibration and METHODS["ort_quantize"].needs_calibration
    # dicts and config objects go through the same validator
    as_dicts = parse_chain([{"method": "prune", "amount": 0.3}, {"method": "quantize", "per_channel": False}], "executorch")
    assert as_dicts == parse_chain([Prune(amount=0.3), Int8Static(per_channel=False)], "executorch")
    r = load_recipe("x86-64-int8", ["compress.0.per_channel=false"])
    assert [type(s) for s in r.steps] == [Int8Static] and r.steps[0].per_channel is False
    assert r.steps[0].params()["per_channel"] is False and "method" not in r.steps[0].params()


def test_recipes_and_passes_load_without_torch():
    code = ("import sys, kit.recipes, kit.compress.registry, kit.pipeline.build; kit.recipes.list_recipes(); "
            "print([m for m in ('torch', 'executorch', 'onnxruntime', 'paramiko') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
