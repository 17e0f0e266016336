"""The accuracy gate owns its metric: top-1 drop (points, labelled), agreement floor (share of
inputs whose top-1 is unchanged), SQNR floor (dB), a user metric (--metric pkg.module:fn); every
message names the metric, its unit, the value, the limit and what to do. Also the search's use
of the same gate and `edgekit compress` with --budget-agreement / --budget-sqnr-db on unlabelled data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kit.compress.gate import FROM_TOP1, judge, load_metric, run_metric
from kit.errors import EdgeKitError
from kit.recipes import load_recipe
from kit.recipes.schema import Budget

OLD_KEYS = {"passed", "basis", "baseline", "result", "drop_points", "budget_points"}


# --- user metrics importable as tests.test_gate:NAME ------------------------------------------
def mean_top_logit(outputs: np.ndarray, labels) -> float:
    """A label-free metric, higher is better: the mean of each row's largest output."""
    return float(np.max(outputs, 1).mean())


def always_raises(outputs, labels) -> float:
    raise ValueError("this metric needs labels")


def returns_nan(outputs, labels) -> float:
    return float("nan")


NOT_CALLABLE = 3


def _row(match: float, sqnr: float, top1: float | None = None, metric: float | None = None) -> dict:
    row = {"agreement": {"top1_match": match, "sqnr_db": sqnr, "max_abs_err": 0.1}}
    if top1 is not None:
        row["top1"] = top1
    if metric is not None:
        row["metric"] = {"name": "m:f", "value": metric}
    return row


BASE = _row(1.0, float("inf"))


def test_unlabelled_agreement_floor_names_metric_unit_value_floor_and_remedy():
    g = judge(BASE, _row(0.865, 12.0), Budget(agreement=0.90), samples=200)
    assert not g.passed and g.basis == "agreement" and not g.labelled
    assert g.message == ("agreement with the original 86.50% is under the floor of 90.00% (share of 200 inputs whose "
                         "top-1 is unchanged; no labels); loosen budget.agreement (--budget-agreement) or pass --override-budget")
    assert g.short == "agreement 86.5% < 90.0%"
    ok = judge(BASE, _row(0.95, 12.0), Budget(agreement=0.90), samples=200)
    assert ok.passed and "95.00% meets the floor of 90.00%" in ok.message


def test_unlabelled_top1_drop_is_read_as_an_agreement_floor_and_says_so():
    g = judge(BASE, _row(0.97, 20.0), Budget(top1_drop=1.0), samples=50)
    assert not g.passed and g.basis == FROM_TOP1 == "agreement (from top1_drop: no labels)"
    assert g.checks[0].field == "budget.top1_drop" and g.checks[0].limit == pytest.approx(0.99)
    assert "budget.top1_drop=1 points is read as an agreement floor of 100 - 1 = 99.00%" in g.message
    assert "set budget.agreement (--budget-agreement, e.g. 0.90)" in g.message and "--override-budget" in g.message
    assert "(from top1_drop: no labels)" in g.short
    # the old spelling (a bare number of points) reads the same way
    assert judge(BASE, _row(0.97, 20.0), 1.0).basis == FROM_TOP1
    # an explicit floor wins over the read-as one
    assert judge(BASE, _row(0.97, 20.0), Budget(top1_drop=1.0, agreement=0.9)).basis == "agreement"


def test_sqnr_floor_in_db_and_several_failures_in_one_line():
    g = judge(BASE, _row(0.80, 12.3), Budget(agreement=0.9, sqnr_db=18), samples=10)
    assert not g.passed and [c.metric for c in g.checks] == ["agreement", "sqnr_db"]
    assert "output SQNR vs the original 12.30 dB is under the floor of 18.00 dB" in g.message
    assert g.message.endswith("loosen budget.agreement (--budget-agreement) and budget.sqnr_db (--budget-sqnr-db) "
                              "or pass --override-budget")
    assert "\n" not in g.message
    only_sqnr = judge(BASE, _row(0.5, 25.0), Budget(sqnr_db=18), samples=10)
    assert only_sqnr.passed and only_sqnr.basis == "sqnr_db"  # no agreement floor read from top1_drop beside it


def test_labelled_top1_drop_in_points_with_floors_when_given():
    base, out = _row(1.0, float("inf"), top1=0.94), _row(0.88, 15.0, top1=0.935)
    g = judge(base, out, Budget(top1_drop=1.0), samples=120)
    assert g.passed and g.basis == "top1" and g.labelled and g.drop_points == pytest.approx(0.5)
    assert g.message == "top-1 drop 0.50 points (94.00% -> 93.50% on 120 labelled inputs) is within the budget of 1.00 points"
    floors = judge(base, out, Budget(top1_drop=1.0, agreement=0.9, sqnr_db=10), samples=120)
    assert not floors.passed and floors.basis == "top1" and "labelled data" in floors.message
    assert [c.passed for c in floors.checks] == [True, False, True]
    over = judge(base, out, Budget(top1_drop=0.2), baseline_top1=0.95)
    assert not over.passed and "1.50 points" in over.message and "loosen budget.top1_drop (--budget-top1-drop)" in over.message
    none = judge(base, out, Budget(top1_drop=None))
    assert none.passed and none.budget_points is None and none.message.startswith("no accuracy budget set")


def test_user_metric_replaces_top1_in_its_own_units():
    base, out = _row(1.0, float("inf"), top1=0.9, metric=0.80), _row(0.9, 20.0, top1=0.5, metric=0.78)
    g = judge(base, out, Budget(top1_drop=1.0, metric="m:f", metric_drop=0.05), samples=30)
    assert g.passed and g.basis == "metric:m:f" and g.drop_points == pytest.approx(0.02)  # top-1 (-40 pt) not judged
    assert "drop 0.02 in the metric's own units" in g.message
    bad = judge(base, out, Budget(metric="m:f", metric_drop=0.01))
    assert not bad.passed and "loosen budget.metric_drop (--budget-metric-drop)" in bad.message
    with pytest.raises(Exception, match="metric_drop"):
        Budget(metric="m:f")


def test_to_dict_keeps_old_keys_adds_units_and_is_strict_json():
    d = judge(BASE, BASE, Budget(agreement=0.9, sqnr_db=18), samples=4).to_dict()
    assert OLD_KEYS <= set(d) and {"labelled", "samples", "agreement", "sqnr_db", "checks", "message", "failed"} <= set(d)
    assert d["sqnr_db"] == "inf" and d["checks"][1]["value"] == "inf" and d["failed"] == []
    assert [(c["metric"], c["unit"], c["bound"]) for c in d["checks"]] == [("agreement", "share", "min"), ("sqnr_db", "dB", "min")]
    json.dumps(d, allow_nan=False)


def test_metric_specs_load_or_fail_in_one_line():
    assert load_metric("tests.test_gate:mean_top_logit") is mean_top_logit
    assert run_metric("tests.test_gate:mean_top_logit", np.array([[1.0, 3.0], [2.0, 0.0]]), None) == 2.5
    cases = [("nosuchpkg.metrics:f", "cannot import module 'nosuchpkg.metrics'"),
             ("tests.test_gate:missing", "has no 'missing'"),
             ("tests.test_gate:NOT_CALLABLE", "is a int, not a function"),
             ("no-colon", "give it as pkg.module:function")]
    for spec, text in cases:
        with pytest.raises(EdgeKitError) as e:
            load_metric(spec)
        assert text in str(e.value) and spec in str(e.value) and "\n" not in str(e.value)
    for spec, text in [("tests.test_gate:always_raises", "ValueError: this metric needs labels"),
                       ("tests.test_gate:returns_nan", "returned nan")]:
        with pytest.raises(EdgeKitError) as e:
            run_metric(spec, np.zeros((2, 3)), None)
        assert text in str(e.value) and spec in str(e.value) and "\n" not in str(e.value)


def test_shipped_recipes_carry_explicit_agreement_floors():
    for name in ("x86-64-int8", "x86-64-int8-ort", "raspberry-pi-5-int8", "raspberry-pi-4-int8", "jetson-orin-nano-int8",
                 "android-arm64-ort"):
        b = load_recipe(name).budget
        assert b.agreement == 0.90 and b.top1_drop == 1.0, name
    for name in ("raspberry-pi-5-combined", "raspberry-pi-5-student-int8", "x86-64-sparse-int8", "x86-64-fp32"):
        assert load_recipe(name).budget.agreement is None, name  # retraining chains / no compression: labels judge them
    with pytest.raises(EdgeKitError, match="budget.agreement"):
        load_recipe("x86-64-int8", ["budget.agreement=90"])  # a share, not a percentage


def test_search_judges_candidates_by_the_gate_and_names_costly_layers():
    from rich.console import Console

    from kit.cli.search import _search_table, budget_text
    from kit.search.recipes import Candidate, SearchResult, _judge, effective_budget, step_facts

    recipe = load_recipe("x86-64-int8")
    report = {"steps": [{"info": {}}, {"info": {"int8_macs_share": 0.97, "worst_layers_sqnr": [
        {"layer": "features.3", "sqnr_db": 14.0}, {"layer": "features.1", "sqnr_db": 9.5},
        {"layer": "classifier", "sqnr_db": 20.0}, {"layer": "features.9", "sqnr_db": 11.0}]}}]}
    share, worst = step_facts(report)
    assert share == 0.97 and worst == ["features.1 (9.5 dB)", "features.9 (11.0 dB)", "features.3 (14.0 dB)"]
    assert step_facts({"steps": [{"info": {"sensitivity": [{"layer": "a", "sqnr_db": 3.0}]}}]}) == (None, ["a (3.0 dB)"])
    from kit.search.recipes import pruning_note

    undone = {"steps": [{"info": {"by": "macs", "stopped": "floor (round 1 agreement 0.632 < 0.9: undone)",
                                   "original": {"macs": 300}, "final": {"macs": 300}}}, {"info": {}}]}
    assert pruning_note(undone) == "stopped: floor (round 1 agreement 0.632 < 0.9: undone); 1.00 of the original macs"
    assert pruning_note(report) == ""
    from kit.search.recipes import float_islands_note

    islands = {"steps": [{"info": {"float_islands": {"chosen": ["c1"], "why": "1 leading layer(s) in float: 2.9 "
                                                      "against 3.1 ms all-int8"}}}]}
    assert float_islands_note(islands) == "1 leading layer(s) in float: 2.9 against 3.1 ms all-int8"
    assert float_islands_note(report) == ""
    budget = effective_budget(recipe, None, 0.95, None)
    assert budget.agreement == 0.95 and budget.top1_drop == 1.0 and recipe.budget.agreement == 0.90
    gate = judge(BASE, _row(0.86, 11.0), budget, samples=200)
    c = Candidate("x86-64-int8", "executorch", "pte", 1, agreement=0.86, sqnr_db=11.0, int8_macs_share=share,
                  worst_layers=worst, p50_ms=1.0, size_bytes=1000, reference_passed=True)
    _judge(c, recipe, None, gate)
    assert not c.within_budget
    assert c.why_not == "agreement 86.0% < 95.0% (costliest layers: features.1 (9.5 dB), features.9 (11.0 dB), features.3 (14.0 dB))"
    fp32 = Candidate("x86-64-fp32", "executorch", "pte", 1, agreement=1.0, sqnr_db=float("inf"), p50_ms=2.0, size_bytes=4000)
    _judge(fp32, load_recipe("x86-64-fp32"), None, judge(BASE, BASE, Budget(agreement=0.95)))
    assert fp32.within_budget
    result = SearchResult("local", "m", "photos", None, None, budget_agreement=0.95, candidates=[c, fp32])
    json.dumps(result.to_dict(), allow_nan=False)  # SQNR inf as "inf"
    console = Console(width=250, record=True)
    console.print(_search_table(result))
    text = console.export_text()
    assert "int8 MACs" in text and "97.0%" in text and "86.0%" in text and "11.0" in text and "inf" in text
    assert " - " in text  # the fp32 candidate has no int8 MACs share
    assert budget_text(None, 0.9, 18) == "agreement >= 90.00% of inputs, SQNR >= 18 dB"


# --- `edgekit compress` on unlabelled data ------------------------------------------------------
@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, digits16, tiny_model):
    folder = tmp_path_factory.mktemp("gate-cli")
    x = np.concatenate([digits16.train.x, digits16.calib.x, digits16.test.x])[:400]
    np.savez(folder / "unlabelled.npz", x=x)
    torch.save(tiny_model, folder / "tiny.pt")
    return folder


def _compress(tmp, name, *extra):
    from kit.cli import main

    return main(["compress", str(tmp / "tiny.pt"), "--recipe", "x86-64-int8-ort", "--data", str(tmp / "unlabelled.npz"),
                 "--image-size", "16", "--out", str(tmp / name), "--eval-samples", "80", "--no-cache",
                 "--set", "compress.0.max_samples=16", *extra])


def test_cli_compress_unlabelled_agreement_budget_passes_and_floors_refuse(unlabelled, capsys, private_build_cache):
    assert _compress(unlabelled, "ok", "--budget-agreement", "0.5") == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    report = json.loads((unlabelled / "ok" / "report.json").read_text())
    gate = report["artifact_gate"]
    assert gate["passed"] and gate["basis"] == "agreement" and gate["labelled"] is False and gate["samples"] == 80
    assert "meets the floor of 50.00% (share of 80 inputs whose top-1 is unchanged; no labels)" in out
    assert "gate:    basis agreement (no labels, 80 inputs)" in out and "SQNR dB" in out
    assert (unlabelled / "ok" / "bundle" / "manifest.json").is_file()

    code = _compress(unlabelled, "refused", "--budget-agreement", "1.0", "--budget-sqnr-db", "200")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("edgekit: error:") and "refused" in err[-1]
    assert "SQNR vs the original" in err[-1] and "under the floor of 200.00 dB" in err[-1] and "--budget-sqnr-db" in err[-1]
    report = json.loads((unlabelled / "refused" / "report.json").read_text())
    checks = {c["metric"]: c for c in report["gate"]["checks"]}
    assert (checks["agreement"]["unit"], checks["agreement"]["limit"], checks["sqnr_db"]["unit"]) == ("share", 1.0, "dB")
    if not checks["agreement"]["passed"]:  # int8 on digits may keep every top-1; when not, the line names it too
        assert "is under the floor of 100.00% (share of 80 inputs" in err[-1]
    assert report["refused"] and not (unlabelled / "refused" / "bundle").exists()


def test_cli_compress_user_metric_good_and_bad(unlabelled, capsys, private_build_cache):
    code = _compress(unlabelled, "metric", "--metric", "tests.test_gate:mean_top_logit", "--budget-metric-drop", "1000")
    assert code == 0, capsys.readouterr().err
    report = json.loads((unlabelled / "metric" / "report.json").read_text())
    assert report["artifact_gate"]["basis"] == "metric:tests.test_gate:mean_top_logit"
    assert report["artifact"]["metric"]["name"] == "tests.test_gate:mean_top_logit"
    assert report["artifact"]["metric"]["value"] == pytest.approx(report["baseline"]["metric"]["value"], rel=0.5)
    capsys.readouterr()
    for extra, text in [(["--metric", "nosuchpkg.m:f", "--budget-metric-drop", "1"], "cannot import module 'nosuchpkg.m'"),
                        (["--metric", "tests.test_gate:mean_top_logit"], "give --budget-metric-drop too"),
                        (["--metric", "tests.test_gate:always_raises", "--budget-metric-drop", "1"], "ValueError")]:
        code = _compress(unlabelled, "bad", *extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("edgekit: error:") and text in err[-1], err
        assert "Traceback" not in "\n".join(err) and not (unlabelled / "bad" / "bundle").exists()
