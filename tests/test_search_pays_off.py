"""Does compression pay off? The recipe search benches the uncompressed fp32 .pte and .onnx of the
same model on the same device in the same run, gives every candidate its speed-up against the
faster of them with a noise verdict, the agreement lost, the size ratio and the host seconds its
build took, picks the fastest candidate within budget that is faster beyond noise (else the best
uncompressed, saying why), and skips a candidate over --max-host-seconds with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from kit.recipes import load_recipe
from kit.search.payoff import HostTimeExceeded, capped_progress
from kit.search.recipes import Candidate, SearchResult, _decide

VERDICTS = {"faster", "same", "slower", "too few samples"}


def _edgekit(*args, env):
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "COLUMNS": "250", **env})


def test_search_measures_both_uncompressed_baselines_and_says_whether_each_candidate_pays_off(
        recipe_model_file, tmp_path, private_build_cache):
    db, out = tmp_path / "results.db", tmp_path / "search"
    names = ["x86-64-fp32", "x86-64-int8-ort"]  # the fp32 candidate is the .pte baseline itself: built once
    run = _edgekit("search", str(recipe_model_file), "--device", "local", "--data", "digits", "--budget-top1-drop", "5",
                   "--quick", *[a for n in names for a in ("--recipe", n)], "--threads", "1,2", "--require-pays-off", "--json",
                   "--out", str(out), "--results", str(db), env={"EDGEKIT_CACHE": os.environ["EDGEKIT_CACHE"]})
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(run.stdout)
    assert doc == json.loads((out / "front.json").read_text())
    # both uncompressed baselines, at each thread count, measured in this run on the device
    base = doc["baselines"]
    assert sorted((b["runtime"], b["format"], b["threads"]) for b in base) == [
        ("executorch", "pte", 1), ("executorch", "pte", 2), ("onnxruntime", "onnx", 1), ("onnxruntime", "onnx", 2)]
    for b in base:
        assert b["p50_ms"] > 0 and b["reference_passed"] and b["uncompressed"] and b["host_seconds"] is not None
    for t in (1, 2):
        mine = [b for b in base if b["threads"] == t]
        assert doc["references"][str(t)] == min(mine, key=lambda b: b["p50_ms"])["recipe"]
    # every candidate x threads, with its pays-off figures against that reference
    cands = doc["candidates"]
    assert sorted((c["recipe"], c["threads"]) for c in cands) == [(n, t) for n in sorted(names) for t in (1, 2)]
    for c in cands:
        ref = next(b for b in base if b["recipe"] == doc["references"][str(c["threads"])] and b["threads"] == c["threads"])
        assert c["error"] is None and c["reference"] == ref["recipe"]
        assert c["verdict"] in VERDICTS and c["speedup"] > 0
        assert abs(c["speedup"] - ref["p50_ms"] / c["p50_ms"]) < 0.05 * c["speedup"]
        assert c["agreement_lost"] is not None and abs(c["agreement_lost"] - (ref["agreement"] - c["agreement"])) < 1e-9
        assert abs(c["size_ratio"] - c["size_bytes"] / ref["size_bytes"]) < 1e-9
        assert c["host_seconds"] is not None and c["host_seconds"] >= 0
        assert c["uncompressed"] == (c["recipe"] == "x86-64-fp32")
        if c["uncompressed"]:
            pte = next(b for b in base if b["format"] == "pte" and b["threads"] == c["threads"])
            assert c["model_sha256"] == pte["model_sha256"] and c["host_seconds"] == pte["host_seconds"]
            assert c["within_budget"]  # a reference never has to pay off
            continue
        assert c["size_ratio"] < 1.0  # int8 weights (with QDQ nodes around them)
        if c["within_budget"]:
            assert c["verdict"] == "faster"
        elif c["top1_drop"] <= 5 and c["reference_passed"]:
            assert "does not pay off" in c["why_not"] and c["verdict"] != "faster"
    # the pick: the fastest within budget that pays off, else the best uncompressed with the reason
    paying = [c for c in cands if c["within_budget"] and not c["uncompressed"]]
    chosen = [c for c in cands + base if c["chosen"]]
    assert len(chosen) == 1
    if paying:
        assert chosen[0]["verdict"] == "faster" and "faster" in doc["chosen_why"]
        assert chosen[0]["p50_ms"] == min(c["p50_ms"] for c in cands if c["within_budget"])
    else:
        assert chosen[0]["uncompressed"] and "no compressed candidate" in doc["chosen_why"]
    assert (doc["chosen"], doc["chosen_threads"]) == (chosen[0]["recipe"], chosen[0]["threads"])
    # one build per recipe, shared by its thread counts; the baselines are not in the results store
    assert len({c["model_sha256"] for c in cands}) == len(names)
    import sqlite3

    with sqlite3.connect(db) as conn:
        variants = sorted(r[0] for r in conn.execute("SELECT a.variant FROM measurements m "
                                                     "JOIN artifacts a ON a.id = m.artifact_id"))
    assert variants == sorted(f"recipe:{n}" for n in names for _ in (1, 2))


def _cand(name, p50, *, compressed=True, threads=1, drop=0.0, agreement=0.99, size=1000, seed=0):
    rng = np.random.default_rng(seed)
    return Candidate(recipe=name, runtime="executorch", format="pte", threads=threads, accuracy=0.9, top1_drop=drop,
                     agreement=agreement, size_bytes=size, p50_ms=p50, reference_passed=True,
                     uncompressed=not compressed, samples=list(p50 * (1 + 0.01 * rng.standard_normal(40))))


def test_the_pick_is_the_fastest_that_pays_off_else_the_best_uncompressed_with_the_reason():
    recipes = {n: load_recipe(r) for n, r in (("int8", "x86-64-int8"), ("slowint8", "x86-64-int8"),
                                               ("lossy", "x86-64-int8"), ("uncompressed-pte", "x86-64-fp32"),
                                               ("uncompressed-onnx", "x86-64-fp32"))}

    def result(*cands):
        r = SearchResult(device="local", model="m", data="d", budget_top1_drop=1.0, baseline_accuracy=0.9,
                         require_pays_off=True)
        r.candidates = list(cands)
        r.baselines = [_cand("uncompressed-pte", 10.0, compressed=False, size=4000, seed=1),
                       _cand("uncompressed-onnx", 8.0, compressed=False, size=4000, seed=2)]
        _decide(r, recipes, {}, 1.0)
        return r

    r = result(_cand("int8", 4.0, size=1000, seed=3), _cand("slowint8", 8.0, seed=4),
               _cand("lossy", 2.0, drop=5.0, seed=5))
    by = {c.recipe: c for c in r.candidates}
    assert r.references == {1: "uncompressed-onnx"}
    assert by["int8"].verdict == "faster" and abs(by["int8"].speedup - 2.0) < 0.05 and by["int8"].size_ratio == 0.25
    assert by["slowint8"].verdict == "same" and "does not pay off" in by["slowint8"].why_not
    assert not by["slowint8"].within_budget and not by["lossy"].within_budget  # lossy: over the top-1 budget
    assert r.chosen == "int8" and by["int8"].chosen and "2.0" in r.chosen_why and "faster" in r.chosen_why

    r = result(_cand("slowint8", 9.0, seed=4), _cand("lossy", 2.0, drop=5.0, seed=5))
    assert r.chosen == "uncompressed-onnx" and r.chosen_candidate.uncompressed
    assert "no compressed candidate" in r.chosen_why and not any(c.chosen for c in r.candidates)
    assert r.candidates[0].verdict == "slower"


def test_max_host_seconds_skips_a_candidate_with_the_reason(recipe_model, digits16, tmp_path, private_build_cache):
    from kit.devices import LocalDevice
    from kit.results.store import ResultsStore
    from kit.search.recipes import load_candidate, search

    # the cap itself: over the time, or predicted over by a progress bar's own pace
    ticks = capped_progress(None, 0.0, t0=0.0)
    try:
        ticks("distill", 1, 10)
        raise AssertionError("no HostTimeExceeded")
    except HostTimeExceeded as e:
        assert "--max-host-seconds 0" in str(e) and "distill" in str(e)

    # a ratio no other test builds, so the sparse build is never a cache hit; fp32 is built (and cached) first
    sparse_recipe = load_candidate("x86-64-sparse-int8", ["compress.0.ratio=0.35"], quick=True)
    fp32_recipe = load_candidate("x86-64-fp32", quick=True)
    with ResultsStore(tmp_path / "r.db") as store, LocalDevice() as device:
        search(recipe_model, digits16, device, [fp32_recipe], store=store, out_dir=tmp_path / "warm",
               budget_top1_drop=5.0, model_name="digits-cnn", baselines=False)
        r = search(recipe_model, digits16, device, [sparse_recipe, fp32_recipe], store=store, out_dir=tmp_path / "out",
                   budget_top1_drop=5.0, model_name="digits-cnn", baselines=False, max_host_seconds=0.05)
    sparse, fp32 = r.candidates
    assert sparse.skipped.startswith("skipped:") and "--max-host-seconds 0.05" in sparse.skipped
    assert sparse.why_not == sparse.skipped and not sparse.within_budget and sparse.p50_ms is None
    assert sparse.host_seconds is not None and sparse.bundle_path is None
    # a cached build costs nothing now: not skipped, its original host seconds shown, its measurement reused
    assert fp32.built_from_cache and fp32.skipped == "" and fp32.host_seconds > 0 and fp32.p50_ms is not None
    assert r.chosen == "x86-64-fp32" and r.reused == 1
