"""`--json` on the list/show/compare/bench commands: exactly one JSON document on stdout, which
parses and carries what the table shows."""

from __future__ import annotations

import json

from tests.fixtures_results import BENCH_RUNS


def _json(capsys, *argv):
    from kit.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)  # the whole of stdout is one document


def test_recipes_list_and_show_as_json(capsys):
    listed = _json(capsys, "recipes", "list", "--json")
    by_name = {r["name"]: r for r in listed}
    assert {"x86-64-fp32", "x86-64-int8"} <= set(by_name)
    int8 = by_name["x86-64-int8"]
    assert int8["device"] == "x86-64" and int8["runtime"] == "executorch" and "quantize" in int8["chain"]
    assert int8["error"] is None and int8["file"].endswith("x86-64-int8.yaml")
    only = _json(capsys, "recipes", "list", "--device", "raspberry-pi-5", "--json")
    assert only and all(r["device"] == "raspberry-pi-5" for r in only)
    shown = _json(capsys, "recipes", "show", "x86-64-int8", "--json")
    assert shown["name"] == "x86-64-int8" and shown["compress"][-1]["method"] == "quantize"


def test_results_list_show_and_compare_as_json(filled_store, capsys):
    db = filled_store.path
    runs = _json(capsys, "results", "list", "--results", db, "--json")
    assert [r["measurements"] for r in runs] == [4, 2] and runs[0]["note"] == "results tests"
    rows = _json(capsys, "results", "show", filled_store.run_id, "--results", db, "--json")
    assert len(rows) == 4 and {r["variant"] for r in rows} == {"tiny-fp32-pte", "tiny-int8-pte", "tiny-fp32-onnx"}
    assert all("samples" not in r for r in rows) and any(r["emulated"] for r in rows)
    with_samples = _json(capsys, "results", "show", filled_store.run_id, "--results", db, "--json", "--samples")
    assert all(len(r["samples"]) == BENCH_RUNS for r in with_samples)
    c = _json(capsys, "compare", filled_store.run_id, filled_store.second_run_id, "--results", db, "--json")
    assert c["kind"] == "runs" and c["rows"] and all("latency" in r for r in c["rows"])


def test_bench_as_json(pte_bundle, tmp_path, capsys):
    db = tmp_path / "results.db"
    doc = _json(capsys, "bench", pte_bundle.path, "--device", "local", "--results", db, "--runs", 5, "--warmup", 1,
                "--json")
    assert doc["run_id"] == 1 and doc["measurement_id"] == 1 and doc["results"] == str(db)
    m = doc["measurement"]
    assert m["device"] == "local" and m["runs"] == 5 and m["p50_ms"] > 0 and m["reference_passed"] is True
    assert doc["twins"] == [] and doc["regression"] is None
    # Whether 5 runs of a tiny model come out slower than the baseline's is machine noise: the exit code
    # must follow the verdict the JSON states (1 on a regression, for CI gates), not a fixed value.
    from kit.cli import main

    code = main([str(a) for a in ("bench", pte_bundle.path, "--results", db, "--runs", 5, "--warmup", 1,
                                  "--baseline", 1, "--json")])
    again = json.loads(capsys.readouterr().out)  # the document is printed on a regression too
    assert again["run_id"] == 2 and again["regression"]["baseline_run_id"] == 1
    assert code == (1 if again["regression"]["regressed"] else 0)
