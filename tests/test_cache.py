"""Build cache (issue 9): an unchanged compress + package is not done twice; a change is."""

from __future__ import annotations

import json


def test_unchanged_compress_job_comes_from_cache(tiny_model, digits16, tmp_path, monkeypatch):
    from kit.pipeline.build import compress_job
    from kit.package import verify
    from kit.recipes import load_recipe

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("x86-64-fp32", ["input.image_size=16"])
    first = compress_job(tiny_model, recipe, digits16, tmp_path / "a", eval_samples=60)
    again = compress_job(tiny_model, recipe, digits16, tmp_path / "b", eval_samples=60)
    assert not first.report.get("from_cache") and again.report["from_cache"] is True
    manifest = lambda p: json.loads((p / "manifest.json").read_text())  # noqa: E731
    assert manifest(again.bundle_path)["model"]["sha256"] == manifest(first.bundle_path)["model"]["sha256"]
    assert again.bundle_path.parent == tmp_path / "b" and verify(again.bundle_path).name == "model"
    assert json.loads((tmp_path / "b" / "report.json").read_text())["bundle"] == str(tmp_path / "b" / "bundle")

    changed = load_recipe("x86-64-fp32", ["input.image_size=16", "budget.top1_drop=2.5"])
    third = compress_job(tiny_model, changed, digits16, tmp_path / "c", eval_samples=60)
    assert not third.report.get("from_cache")


def test_cache_key_follows_the_host_cpus_int8_kind(tiny_model, digits16, monkeypatch):
    """reduce_range auto depends on the host's VNNI: a cache copied between CPU kinds must not be reused."""
    import kit.compress.ort_quant as ort_quant
    from kit.pipeline.build import _cache_key
    from kit.recipes import load_recipe

    recipe = load_recipe("x86-64-int8-ort", ["input.image_size=16"])
    keys = set()
    for vnni in (False, True):
        monkeypatch.setattr(ort_quant, "host_has_vnni", lambda vnni=vnni: vnni)
        keys.add(_cache_key(recipe, tiny_model, digits16, None, name="m"))
    assert len(keys) == 2
