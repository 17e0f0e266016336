"""Hardware-aware student search: MobileNetV2 students timed on the `local` device agent, a short
distillation for accuracy, the front and the count of candidates measured; timings are reused
from the results store, students over the latency budget are never trained."""

from __future__ import annotations

import json

import pytest

from kit.errors import EdgeKitError
from kit.devices import LocalDevice
from kit.results.store import ResultsStore
from kit.search.students import StudentSpace, student_search


def test_student_search_measures_distills_and_reuses(recipe_model, tmp_path, private_build_cache):
    space = StudentSpace(widths=[0.25, 0.5], depths=[0.5], resolutions=[8])  # digits are 8x8 scans
    db = tmp_path / "results.db"
    with ResultsStore(db) as store, LocalDevice() as device:
        first = student_search(recipe_model, "digits", device, store=store, space=space, strategy="grid",
                               time_budget_s=3600, distill_epochs=1, distill_max_samples=256, runs=5)
        assert first.space_size == 2 and len(first.candidates) == 2
        assert first.measured == 2 and first.reused == 0 and first.trained == 2
        for c in first.candidates:
            assert c.p50_ms > 0 and c.params > 0 and c.macs > 0 and c.accuracy is not None
        wide, narrow = sorted(first.candidates, key=lambda c: -c.width)
        assert wide.params > narrow.params and wide.macs > narrow.macs
        assert first.front and all(c.trained for c in first.front)
        assert first.chosen in [c.key for c in first.front]
        rows = store.db.execute("SELECT a.variant FROM measurements m JOIN artifacts a ON a.id = m.artifact_id").fetchall()
        assert sorted(r[0] for r in rows) == ["student-search:student-w0.25-d0.5-r8", "student-search:student-w0.5-d0.5-r8"]

        # Second search, evolutionary, with a latency budget no student meets: every timing comes
        # from the store (the device's latency table), and nothing is trained.
        second = student_search(recipe_model, "digits", device, store=store, space=space, strategy="evolution",
                                time_budget_s=3600, latency_budget_ms=1e-6, runs=5)
        assert second.measured == 0 and second.reused == len(second.candidates) >= 1
        assert second.trained == 0 and all("budget" in c.skipped for c in second.candidates)
        assert second.chosen is None
        assert store.db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 2
    json.dumps(first.to_dict())  # serialisable for reports


def test_student_search_stops_at_the_time_budget_and_checks_its_space(recipe_model, tmp_path, private_build_cache):
    with ResultsStore(tmp_path / "r.db") as store:
        result = student_search(recipe_model, "digits", LocalDevice(), store=store, time_budget_s=1e-9,
                                space=StudentSpace(widths=[0.25], depths=[0.5], resolutions=[16]))
        assert result.stopped_by_time and result.candidates == [] and result.measured == 0
        with pytest.raises(EdgeKitError, match="strategy 'random'"):
            student_search(recipe_model, "digits", LocalDevice(), store=store, strategy="random")
    with pytest.raises(EdgeKitError, match=r"widths: \[3.0\] out of range"):
        StudentSpace(widths=[3.0])


def test_student_search_cli(recipe_model_file, tmp_path, capsys, private_build_cache):
    from kit.cli import main

    out = tmp_path / "students.json"
    code = main(["student-search", str(recipe_model_file), "--device", "local", "--data", "digits", "--train-teacher", "0",
                 "--widths", "0.25", "--depths", "0.5", "--resolutions", "8", "--epochs", "1", "--max-samples", "128",
                 "--results", str(tmp_path / "r.db"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["measured"] == 1 and doc["trained"] == 1 and doc["space_size"] == 1
    assert doc["chosen"] == [0.25, 0.5, 8]
    assert "Student search on 'local'" in capsys.readouterr().out
    assert main(["student-search", "--widths", "a,b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "edgekit: error: --widths 'a,b': give numbers separated by commas, e.g. 0.25,0.5"


def test_prepare_teacher_loads_and_trains_only_when_asked():
    from kit.evaluate import accuracy, torch_predictor
    from kit.data import load_data
    from kit.search.students import prepare_teacher

    labels = []
    fresh = prepare_teacher("teacher", data="digits", epochs=0, step=labels.append)
    assert labels == []  # loaded as it is: nothing trained
    trained = prepare_teacher("teacher", data="digits", epochs=2, step=labels.append,
                              progress=lambda label, done, total: labels.append(label))
    assert labels[0] == "training the teacher (2 epochs)" and "train" in labels
    test = load_data("digits").test
    assert accuracy(torch_predictor(trained), test) > accuracy(torch_predictor(fresh), test)
