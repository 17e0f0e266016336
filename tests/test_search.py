"""Recipe search: candidates measured on the `local` device agent, the Pareto front, the choice
within the accuracy budget, the front as a table and a PNG, and measurements reused from the
results store by a second search."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from kit.errors import EdgeKitError
from kit.recipes import load_recipe
from kit.results.pareto import pareto_front
from kit.search.recipes import Candidate, _judge, candidates_for, device_kind


def test_pareto_front_keeps_only_undominated_points():
    pts = [
        {"p50_ms": 1.0, "size_bytes": 100, "accuracy": 0.90},  # fastest
        {"p50_ms": 2.0, "size_bytes": 50, "accuracy": 0.90},   # smallest
        {"p50_ms": 3.0, "size_bytes": 200, "accuracy": 0.95},  # most accurate
        {"p50_ms": 3.0, "size_bytes": 200, "accuracy": 0.94},  # dominated by the one above
        {"p50_ms": 1.0, "size_bytes": 100, "accuracy": 0.90},  # a tie with the first: neither dominates
        {"p50_ms": 2.5, "size_bytes": 120, "accuracy": 0.89},  # dominated by the first
    ]
    objectives = [("p50_ms", "min"), ("size_bytes", "min"), ("accuracy", "max")]
    assert pareto_front(pts, objectives) == [True, True, True, False, True, False]
    assert pareto_front([], objectives) == []


def test_budget_judgement_names_the_reason():
    recipe = load_recipe("x86-64-int8", ["budget.latency_ms=1.0"])
    ok = Candidate("a", "executorch", "pte", 1, accuracy=0.9, top1_drop=0.4, p50_ms=0.5, reference_passed=True)
    _judge(ok, recipe, 1.0)
    assert ok.within_budget and ok.why_not == ""
    over = Candidate("b", "executorch", "pte", 1, accuracy=0.8, top1_drop=1.5, p50_ms=2.0, reference_passed=False)
    _judge(over, recipe, 1.0)
    assert not over.within_budget
    assert "top-1 drop 1.50 > 1" in over.why_not and "goal 1" in over.why_not and "reference" in over.why_not


def test_candidates_follow_the_device_kind():
    from kit.devices import LocalDevice

    kind = device_kind(LocalDevice())
    if kind is None:
        pytest.skip("this host's architecture has no shipped recipes (only x86-64 hosts do)")
    names = {r.name for r in candidates_for(kind)}
    assert {"x86-64-fp32", "x86-64-int8", "x86-64-int8-ort"} <= names
    assert not any(n.startswith("raspberry") for n in names)
    with pytest.raises(EdgeKitError, match="no recipe targets device kind 'toaster'"):
        candidates_for("toaster")


def _edgekit(*args, env):
    return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "COLUMNS": "250", **env})


def test_search_on_digits_picks_a_recipe_shows_the_front_and_reuses_measurements(recipe_model, recipe_model_file,
                                                                                  digits16, tmp_path, private_build_cache):
    from kit.devices import LocalDevice
    from kit.results.store import ResultsStore
    from kit.search.recipes import load_candidate, search

    db, out = tmp_path / "results.db", tmp_path / "search"
    names = ["x86-64-fp32", "x86-64-int8", "x86-64-int8-ort", "x86-64-sparse-int8"]
    run = _edgekit("search", str(recipe_model_file), "--device", "local", "--data", "digits", "--budget-top1-drop", "1.0",
                   "--quick", *[a for n in names for a in ("--recipe", n)], "--out", str(out), "--results", str(db),
                   env={"EDGEKIT_CACHE": os.environ["EDGEKIT_CACHE"]})
    assert run.returncode == 0, run.stderr[-2000:]
    # the front as a table, with the choice
    assert f"{len(names)} candidates, {len(names)} measured, 0 reused" in run.stdout
    for n in names:
        assert n in run.stdout
    assert "chosen" in run.stdout
    doc = json.loads((out / "front.json").read_text())
    chosen = [c for c in doc["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and doc["chosen"] == chosen[0]["recipe"]
    assert f"chosen: {doc['chosen']}" in run.stdout
    pick = chosen[0]
    assert pick["on_front"] and pick["within_budget"] and pick["top1_drop"] <= 1.0
    # the choice is the fastest candidate within the budget
    feasible = [c for c in doc["candidates"] if c["within_budget"]]
    assert pick["p50_ms"] == min(c["p50_ms"] for c in feasible)
    assert all(c["error"] is None and c["reference_passed"] for c in doc["candidates"]), doc["candidates"]
    assert doc["objectives"][:3] == ["p50_ms", "size_bytes", "accuracy"]  # energy only with sensors (none here)
    # ...and as a plot
    png = (out / "front.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # every measurement is in the results store, with the recipe and the host-side accuracy
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT a.sha256, m.accuracy, a.variant FROM measurements m "
                            "JOIN artifacts a ON a.id = m.artifact_id").fetchall()
    assert len(rows) == len(names)
    assert {r[2] for r in rows} == {f"recipe:{n}" for n in names}
    assert {r[0] for r in rows} == {c["model_sha256"] for c in doc["candidates"]}

    # A second search over two of them: same artifacts (build cache), measurements reused from the store.
    again = [load_candidate(n, quick=True) for n in names[:2]]
    with ResultsStore(db) as store, LocalDevice() as device:
        second = search(recipe_model, "digits", device, again, store=store, out_dir=tmp_path / "again",
                        budget_top1_drop=1.0, model_name="digits-cnn")
        assert store.db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == len(names)
    assert second.measured == 0 and second.reused == 2
    assert all(c.reused and c.built_from_cache for c in second.candidates), [(c.recipe, c.reused, c.built_from_cache, c.skipped, c.error) for c in second.candidates]
    first = {c["recipe"]: c for c in doc["candidates"]}
    for c in second.candidates:
        assert c.model_sha256 == first[c.recipe]["model_sha256"]
        assert c.p50_ms == first[c.recipe]["p50_ms"]
    assert second.chosen in {n for n in names[:2]}


def test_search_without_a_signing_key_fails_before_any_work(recipe_model, digits16, tmp_path, monkeypatch):
    from kit.devices import LocalDevice
    from kit.results.store import ResultsStore
    from kit.search.recipes import search

    monkeypatch.setenv("EDGEKIT_SIGNING_KEY", str(tmp_path / "missing.ed25519"))
    with ResultsStore(tmp_path / "r.db") as store:
        with pytest.raises(EdgeKitError, match="missing.ed25519.*keys init"):
            search(recipe_model, digits16, LocalDevice(), [load_recipe("x86-64-fp32", ["input.image_size=16"])],
                   store=store, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
