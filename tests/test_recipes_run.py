"""Every shipped recipe runs end to end on the `local` device: its compression chain (real torch,
PT2E/XNNPACK, ORT quantization), packaging for its runtime and format (signed bundle), an
accuracy check on the host and a bench on the device agent. Small inputs and one epoch: the
recipe's own `smoke` overrides."""

from __future__ import annotations

import json

import pytest

from kit.devices import BenchOptions, LocalDevice, bench
from kit.package import Bundle, verify
from kit.recipes import load_recipe, shipped_dir
from kit.pipeline.build import apply_recipe

SUFFIX = {"pte": ".pte", "onnx": ".onnx", "ort": ".ort"}


def _groups() -> dict[str, list[str]]:
    """Shipped recipes grouped by what their small-input run computes (runtime, format, input, chain).

    Recipes in one group differ only in name, threads, budgets or bench counts once shrunk for
    tests (e.g. the int8 XNNPACK recipes of four devices), so one run per group covers them all;
    the x86-64 member represents a group when there is one, so `edgekit search` in test_search.py
    reuses its build from the cache.
    """
    groups: dict[str, list[str]] = {}
    for path in sorted(shipped_dir().glob("*.yaml")):
        small = load_recipe(path, load_recipe(path).smoke)
        what = small.model_dump(mode="json", include={"runtime", "format", "input", "compress"})
        what["input"]["channels"] = what["input"]["channels"] or 1  # unset = as the data (digits: 1)
        what = json.dumps(what, sort_keys=True)
        groups.setdefault(what, []).append(path.stem)
    return {sorted(names, key=lambda n: (not n.startswith("x86-64"), n))[0]: names for names in groups.values()}


GROUPS = _groups()


def test_every_shipped_recipe_is_in_a_run_group():
    covered = sorted(n for names in GROUPS.values() for n in names)
    assert covered == sorted(p.stem for p in shipped_dir().glob("*.yaml"))
    assert len(GROUPS) >= 8  # fp32, int8 pte, int8 onnx, int8 ort, sparse, sparse+int8, combined, student


@pytest.fixture(scope="module")
def baseline_accuracy(recipe_model, digits16):
    from kit.evaluate import accuracy, torch_predictor

    acc = accuracy(torch_predictor(recipe_model), digits16.test)
    assert acc > 0.6, f"the test model should have learned digits16 (top-1 {acc:.2f})"
    return acc


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_shipped_recipe_runs_end_to_end_on_local(name, recipe_model, digits16, baseline_accuracy, tmp_path,
                                                 private_build_cache):
    recipe = load_recipe(name)
    small = load_recipe(name, recipe.smoke)
    assert small.input.image_size in (None, 16)
    applied = apply_recipe(small, recipe_model, digits16, tmp_path / "bundle", baseline_accuracy=baseline_accuracy,
                           name="digits-cnn", cache=True)
    bundle = Bundle.load(applied.bundle_path)
    # packaged for the recipe's runtime and format, signed and verifiable, recipe recorded
    assert bundle.runtime == small.runtime
    assert bundle.model_file.suffix == SUFFIX[small.format]
    verify(bundle.path)
    assert bundle.manifest["recipe"]["name"] == name
    # the chain did what the recipe says, step by step
    steps = applied.report.get("steps", [])
    assert [s["method"] for s in steps] == [s["method"] for s in small.compress]
    baseline_macs = applied.report["baseline"]["macs"]
    if any(s["method"] == "prune_structured" for s in small.compress):
        pruned = next(s for s in steps if s["method"] == "prune_structured")
        assert pruned["macs"] < baseline_macs  # channels really removed
    if any(s["method"] == "distill" and s.get("student") for s in small.compress):
        student = next(s for s in steps if s["method"] == "distill")
        assert student["macs"] != baseline_macs  # a different network, not the model fine-tuned
    # accuracy of the packaged artifact, judged against the original
    assert applied.accuracy is not None
    if not any(s["method"] == "distill" and s.get("student") for s in small.compress):
        assert applied.accuracy > 0.2  # learned, not chance (a new student after one short epoch may be)
    assert applied.top1_drop == pytest.approx(100 * (baseline_accuracy - applied.accuracy))
    assert applied.gate_passed == (applied.top1_drop <= small.budget.top1_drop + 1e-9 and applied.report["gate"]["passed"])
    # measured on the device agent, which checks the reference output
    with LocalDevice() as device:
        m = bench(device, bundle, BenchOptions(runs=small.bench.runs, warmup=small.bench.warmup, threads=small.threads))
    assert m.reference_passed, json.dumps(m.raw.get("reference_check"))
    assert m.runtime == small.runtime and m.threads == small.threads
    assert 0 < m.p50_ms <= m.p99_ms
