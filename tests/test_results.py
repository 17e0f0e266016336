"""Results store: schema, migration from v1, find_measurement, export, compare's noise verdict,
regression against a baseline, and the `edgekit results/compare/report` commands."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3

import numpy as np
import pytest
import torch

from kit.errors import EdgeKitError
from kit.results import schema
from kit.results.compare import compare, latency_verdict, samples_of
from kit.results.export import CSV_COLUMNS, export
from kit.results.regression import check_against_baseline
from kit.results.store import SCHEMA_VERSION, ResultsStore
from tests.fixtures_results import BENCH_RUNS


def _columns(db, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


# --- schema ---------------------------------------------------------------------------------
def test_fresh_store_has_the_v2_schema(tmp_path):
    with ResultsStore(tmp_path / "r.db") as s:
        assert s.schema_version == SCHEMA_VERSION == 3  # v3: issue 16 (memory columns, profiles)
        tables = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"artifacts", "devices", "runs", "measurements", "models", "recipes", "rollouts", "rollout_devices"} <= tables
        # The fleet owner writes these columns directly (CONTRACTS.md).
        assert _columns(s.db, "rollouts") == ["id", "bundle_id", "model_name", "group_name", "started", "finished", "status", "options_json"]
        assert _columns(s.db, "rollout_devices") == ["rollout_id", "device", "stage", "status", "previous_bundle_id", "error", "updated"]
        for col in ("model_id", "recipe_id", "accuracy_n"):
            assert col in _columns(s.db, "artifacts")
        for col in ("energy_mj", "mean_power_w", "throttled", "min_ms", "max_ms"):
            assert col in _columns(s.db, "measurements")
        assert "emulated" in _columns(s.db, "devices")
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
            with s.db:
                s.db.execute("INSERT INTO rollout_devices (rollout_id, device) VALUES (999, 'x')")
    with ResultsStore(tmp_path / "r.db") as s:  # reopening is a no-op
        assert s.schema_version == 3


def test_newer_or_broken_store_is_refused_with_one_line(tmp_path):
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(EdgeKitError, match=r"newer.db has schema version 99.*upgrade edgekit"):
        ResultsStore(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(EdgeKitError, match=r"junk.db: not a usable SQLite file") as e:
        ResultsStore(junk)
    assert "\n" not in str(e.value)
    with pytest.raises(EdgeKitError, match="no such file"):
        ResultsStore(tmp_path / "absent.db", must_exist=True)
    assert not (tmp_path / "absent.db").exists()


def _make_v1_store(path, real_row: dict, manifest: dict) -> None:
    """A store exactly as the v1 kit wrote it: v1 DDL, user_version 1, rows with v1 columns only."""
    db = sqlite3.connect(path)
    db.executescript(schema.SCHEMA_V1)
    db.execute("PRAGMA user_version = 1")
    raw = json.loads(real_row["raw_json"])
    power = {"available": True, "mean_w": 2.5, "energy_mj_per_inference": 31.25, "backend": "rpi5-pmic (recorded)"}
    thermal = {"available": True, "before_c": {"cpu": 48.0}, "after_c": {"cpu": 71.0}, "throttled": True}
    with db:
        db.execute("INSERT INTO artifacts (sha256, bundle_id, name, variant, runtime, format, size_bytes, accuracy, manifest_json) "
                   "VALUES (?,?,?,?,?,?,?,?,?)", (manifest["model"]["sha256"], manifest["bundle_id"], "tiny", "tiny-fp32-pte",
                                                  "executorch", "pte", manifest["model"]["size"], 0.91, json.dumps(manifest)))
        db.execute("INSERT INTO devices (name, info_json) VALUES (?, ?)", ("pi5", json.dumps({"arch": "aarch64", "emulated": True})))
        db.execute("INSERT INTO devices (name, info_json) VALUES (?, ?)", ("local", None))
        db.execute("INSERT INTO runs (started, kind, note) VALUES (1700000000.0, 'demo', 'v1 run')")
        # kit/fleet/rollout_state.py creates its tables on a v1 store itself: v2 must accept them.
        db.execute("CREATE TABLE rollouts (id INTEGER PRIMARY KEY, bundle_id TEXT NOT NULL, model_name TEXT NOT NULL, "
                   "group_name TEXT NOT NULL, started REAL NOT NULL, finished REAL, status TEXT NOT NULL, options_json TEXT)")
        db.execute("INSERT INTO rollouts (bundle_id, model_name, group_name, started, status) VALUES ('b1', 'tiny', 'pis', 1.0, 'succeeded')")
        for device_id in (1, 2):
            db.execute("INSERT INTO measurements (run_id, artifact_id, device_id, created, threads, p50_ms, p90_ms, p99_ms, mean_ms, "
                       "std_ms, cv, runs, load_ms, first_inference_ms, peak_rss_mb, reference_passed, accuracy, power_json, "
                       "thermal_json, samples_json, raw_json) VALUES (1, 1, ?, 1700000001.0, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 0.91, ?, ?, ?, ?)",
                       (device_id, real_row["p50_ms"], real_row["p90_ms"], real_row["p99_ms"], real_row["mean_ms"], real_row["std_ms"],
                        real_row["cv"], real_row["runs"], real_row["load_ms"], real_row["first_inference_ms"], real_row["peak_rss_mb"],
                        json.dumps(power if device_id == 1 else {"available": False, "reason": "no sensor"}),
                        json.dumps(thermal if device_id == 1 else {"available": False}), real_row["samples_json"], json.dumps(raw)))
    db.close()


def test_migration_from_v1_keeps_every_row_and_backfills(filled_store, tmp_path):
    with ResultsStore(filled_store.path) as s:
        real = s.measurements(filled_store.run_id, device="local")[0]
    manifest = {**json.loads(real["manifest_json"]), "recipe": {"name": "pi5-int8", "compress": [{"method": "quantize"}]}}
    path = tmp_path / "v1.db"
    _make_v1_store(path, real, manifest)

    with ResultsStore(path) as s:
        assert s.schema_version == 3
        rows = s.measurements()
        assert len(rows) == 2
        pi5, local = rows
        assert pi5["device"] == "pi5" and pi5["emulated"] == 1 and local["emulated"] == 0
        assert pi5["p50_ms"] == real["p50_ms"] and samples_of(pi5) == samples_of(real) and len(samples_of(pi5)) == BENCH_RUNS
        assert pi5["accuracy"] == 0.91 and pi5["run_note"] == "v1 run"
        # v2 columns filled from the v1 JSON blobs
        lat = json.loads(real["raw_json"])["latency"]
        assert pi5["min_ms"] == lat["min_ms"] and pi5["max_ms"] == lat["max_ms"]
        assert pi5["energy_mj"] == 31.25 and pi5["mean_power_w"] == 2.5 and pi5["throttled"] == 1
        assert local["energy_mj"] is None and local["throttled"] is None
        assert pi5["recipe_name"] == "pi5-int8" and json.loads(pi5["recipe_json"])["compress"] == [{"method": "quantize"}]
        assert [m["name"] for m in s.db.execute("SELECT name FROM models")] == ["tiny"]
        assert [tuple(r) for r in s.db.execute("SELECT bundle_id, status FROM rollouts")] == [("b1", "succeeded")]
        assert s.db.execute("SELECT model_id FROM artifacts").fetchone()[0] == 1
        # The report shows what v1 rows carried: recorded energy, throttling, the emulated device.
        from kit.results.report import render

        page = render(rows)
        assert 'id="energy-bars"' in page and "<td class=num>31.250</td>" in page
        assert re.search(r"<li class='throttled'>#1 tiny-fp32-pte on pi5: the device throttled", page)
        assert "temperature rose 23 °C" in page and "Device pi5 is emulated" in page
        # and the migrated store keeps working: new rows, lookups
        assert s.find_measurement(manifest["model"]["sha256"], "pi5", 1)["id"] == pi5["id"]
        run = s.start_run("bench")
        assert run == 2


def test_failed_migration_leaves_the_v1_file_untouched(filled_store, tmp_path):
    with ResultsStore(filled_store.path) as s:
        real = s.measurements(filled_store.run_id, device="local")[0]
    path = tmp_path / "v1.db"
    _make_v1_store(path, real, json.loads(real["manifest_json"]))
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE measurements_by_run (x)")  # a user's table in the way of v2's last statement
    db.commit()
    db.close()
    with pytest.raises(EdgeKitError, match="already a table named measurements_by_run"):
        ResultsStore(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "model_id" not in _columns(db, "artifacts")  # the ALTERs before the failure were rolled back
    assert db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 2
    assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'models'").fetchall()


def test_find_measurement_returns_the_newest_match(filled_store):
    with ResultsStore(filled_store.path) as s:
        sha = filled_store.variants["tiny-fp32-pte"].manifest["model"]["sha256"]
        hit = s.find_measurement(sha, "local", 1)
        assert hit["run_id"] == filled_store.second_run_id and hit["variant"] == "tiny-fp32-pte"
        assert hit["recipe_name"] == "tiny-xnnpack-fp32" and hit["p50_ms"] > 0
        assert s.find_measurement(sha, "pi5-emulated", 1)["emulated"] == 1
        assert s.find_measurement(sha, "local", 4) is None
        assert s.find_measurement(sha, "nowhere", 1) is None
        assert s.find_measurement("0" * 64, "local", 1) is None


# --- export ---------------------------------------------------------------------------------
def test_export_csv_and_json(filled_store, tmp_path):
    with ResultsStore(filled_store.path) as s:
        rows = s.measurements()
        out = tmp_path / "x" / "all.csv"
        text = export(s, "csv", out)
        assert out.read_text() == text and not list(out.parent.glob("*.part"))
        parsed = list(csv.DictReader(io.StringIO(text)))
        assert list(parsed[0]) == CSV_COLUMNS
        assert len(parsed) == len(rows) == 6
        assert [float(r["p50_ms"]) for r in parsed] == [r["p50_ms"] for r in rows]
        assert {r["device"] for r in parsed} == {"local", "pi5-emulated"}
        assert [r["emulated"] for r in parsed if r["device"] == "pi5-emulated"] == ["True"]

        with_samples = list(csv.DictReader(io.StringIO(export(s, "csv", run_id=filled_store.second_run_id, samples=True))))
        assert len(with_samples) == 2 and len(with_samples[0]["samples_ms"].split()) == BENCH_RUNS

        doc = json.loads(export(s, "json", run_id=filled_store.run_id, samples=True))
        assert len(doc) == 4 and all(len(d["samples"]) == BENCH_RUNS for d in doc)
        pte = next(d for d in doc if d["variant"] == "tiny-fp32-pte" and d["device"] == "local")
        assert pte["manifest"]["delegation"]["delegated_nodes"] > 0
        assert pte["recipe"]["name"] == "tiny-xnnpack-fp32" and pte["power"]["available"] is False
        assert "raw" not in pte and "samples" not in json.loads(export(s, "json"))[0]

        with pytest.raises(EdgeKitError, match="choose one of json, csv"):
            export(s, "xml")
        with pytest.raises(EdgeKitError, match="no run 99"):
            export(s, "csv", run_id=99)


# --- the noise verdict ------------------------------------------------------------------------
def test_noise_verdict_on_synthetic_repetitions():
    rng = np.random.default_rng(1)
    # Latency-like: log-normal body plus a few slow outliers, like real timings.
    def draw(n, scale=1.0):
        x = rng.lognormal(np.log(2.0), 0.08, n) * scale
        x[rng.random(n) < 0.03] *= 3
        return x
    assert latency_verdict(draw(200), draw(200)).verdict == "within noise"
    shifted = latency_verdict(draw(200), draw(200, 1.15))
    assert shifted.verdict == "slower" and 1.1 < shifted.ratio < 1.2 and shifted.ci_low > 1.0
    assert latency_verdict(draw(200), draw(200, 0.85)).verdict == "faster"
    assert latency_verdict([1.0, 1.1], [2.0, 2.1]).verdict == "too few samples"
    # A 5 % shift that the within-run repetitions call real...
    a, b = draw(400), draw(400, 1.05)
    assert latency_verdict(a, b).verdict == "slower"
    # ...is within noise when earlier runs of the same artifact spread by 5 % run to run.
    widened = latency_verdict(a, b, run_to_run=(0.05, 6))
    assert widened.verdict == "within noise" and "6 earlier runs" in widened.basis


def test_noise_verdict_on_recorded_repetitions(filled_store):
    with ResultsStore(filled_store.path) as s:
        pool = np.asarray(samples_of(s.measurements(filled_store.run_id, device="local")[0]))
    assert pool.size == BENCH_RUNS
    rng = np.random.default_rng(0)
    # Two sample sets drawn from the same recorded distribution...
    a, b = rng.choice(pool, 200), rng.choice(pool, 200)
    assert latency_verdict(a, b, confidence=0.999).verdict == "within noise"
    # ...and the same distribution 30 % slower.
    v = latency_verdict(a, rng.choice(pool, 200) * 1.3)
    assert v.verdict == "slower" and v.ci_low > 1.1


# --- compare ------------------------------------------------------------------------------------
def test_compare_runs_devices_and_artifacts(filled_store):
    with ResultsStore(filled_store.path) as s:
        c = compare(s, str(filled_store.run_id), f"run:{filled_store.second_run_id}")
        assert c.kind == "runs" and len(c.rows) == 2
        assert {r.key for r in c.rows} == {"tiny-fp32-pte on local (1t)", "tiny-int8-pte on local (1t)"}
        assert set(c.only_in_a) == {"tiny-fp32-onnx on local (1t)", "tiny-fp32-pte on pi5-emulated (1t)"}
        for r in c.rows:
            assert r.p50_ratio == pytest.approx(r.b["p50_ms"] / r.a["p50_ms"])
            assert r.latency.verdict in ("within noise", "slower", "faster") and r.latency.n_a == BENCH_RUNS
            assert r.accuracy_delta == 0 and r.size_ratio == 1
        assert json.loads(json.dumps(c.to_dict()))["rows"][0]["latency"]["confidence"] == 0.99

        d = compare(s, "local", "device:pi5-emulated")
        assert d.kind == "devices" and len(d.rows) == 1 and d.rows[0].b["device"] == "pi5-emulated"

        art = compare(s, "tiny-fp32-pte", "tiny-int8-pte")
        assert art.kind == "artifacts" and [r.key for r in art.rows] == ["on local (1t)"]
        sizes = {v: filled_store.variants[v].manifest["model"]["size"] for v in ("tiny-fp32-pte", "tiny-int8-pte")}
        assert art.rows[0].size_ratio == pytest.approx(sizes["tiny-int8-pte"] / sizes["tiny-fp32-pte"])

        sha = filled_store.variants["tiny-fp32-onnx"].manifest["model"]["sha256"]
        assert compare(s, f"artifact:{sha[:10]}", "tiny-fp32-pte").rows[0].a["runtime"] == "onnxruntime"

        with pytest.raises(EdgeKitError, match="compare two runs, two devices or two artifacts"):
            compare(s, "1", "local")
        with pytest.raises(EdgeKitError, match="'nothing': not a run id, device name or artifact"):
            compare(s, "nothing", "local")
        with pytest.raises(EdgeKitError, match="no run 42"):
            compare(s, "42", "1")


# --- regression ---------------------------------------------------------------------------------
class _Slower(torch.nn.Module):
    """Same interface as TinyNet, ~30x the work: a new build of the variant that regressed."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.Sequential(torch.nn.Conv2d(1, 48, 3, padding=1), torch.nn.ReLU(),
                                         torch.nn.Conv2d(48, 48, 3, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(48, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.convs(x), 1), 1))


def test_regression_against_baseline(filled_store, store_copy, digits16, bundles_dir):
    from kit.devices import BenchOptions, LocalDevice, bench
    from kit.package import package

    with ResultsStore(store_copy) as s:
        same = check_against_baseline(s, filled_store.second_run_id, filled_store.run_id)
        metrics = {(r.key, r.metric) for r in same.rows}
        assert ("tiny-fp32-pte on local (1t)", "latency") in metrics and ("tiny-int8-pte on local (1t)", "accuracy") in metrics
        assert not any(r.regressed for r in same.rows if r.metric == "accuracy")  # same artifacts, same accuracy
        assert same.regressed == any(r.verdict == "slower" for r in same.rows)

        # A slower build of the same variant, and an int8 build whose accuracy dropped 10 points.
        torch.manual_seed(0)
        slow = package(_Slower().eval(), "executorch", bundles_dir / "tiny-slow-pte", digits16.test.x[:1], name="tiny")
        run = s.start_run("bench", note="regressed build")
        with LocalDevice() as local:
            m = bench(local, slow, BenchOptions(runs=BENCH_RUNS, warmup=3))
            s.record(run, slow, m, "tiny-fp32-pte", 0.5, accuracy_n=len(digits16.test.y))
            base_int8 = s.measurements(filled_store.run_id, device="local")[1]
            assert base_int8["variant"] == "tiny-int8-pte"
            int8 = filled_store.variants["tiny-int8-pte"]
            m8 = bench(local, int8, BenchOptions(runs=BENCH_RUNS, warmup=3))
        # record() keeps the artifact's accuracy per measurement: the drop is attributed to this run only.
        s.record(run, int8, m8, "tiny-int8-pte", base_int8["accuracy"] - 0.10, accuracy_n=len(digits16.test.y))
        v = check_against_baseline(s, run, filled_store.run_id)
        assert v.regressed
        by = {(r.key, r.metric): r for r in v.rows}
        lat = by[("tiny-fp32-pte on local (1t)", "latency")]
        assert lat.regressed and lat.verdict == "slower" and lat.change > 2
        acc = by[("tiny-int8-pte on local (1t)", "accuracy")]
        assert acc.regressed and acc.change == pytest.approx(-0.10) and "z-test" in acc.detail
        assert json.loads(json.dumps(v.to_dict()))["regressed"] is True

        with pytest.raises(EdgeKitError, match="no run 77"):
            check_against_baseline(s, run, 77)


# --- CLI ------------------------------------------------------------------------------------------
def _cli(capsys, *argv):
    from kit.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_results_compare_report(filled_store, tmp_path, capsys, monkeypatch):
    from kit.cli import _ui

    monkeypatch.setattr(_ui.stdout, "_width", 200)  # tables unfolded, whatever the test terminal is
    db = str(filled_store.path)
    code, out, _ = _cli(capsys, "results", "list", "--results", db)
    assert code == 0 and "results tests" in out and "pi5-emulated" in out
    code, out, _ = _cli(capsys, "results", "list", "--results", db, "--format", "json")
    assert code == 0 and [r["measurements"] for r in json.loads(out)] == [4, 2]
    code, out, _ = _cli(capsys, "results", "show", str(filled_store.run_id), "--results", db)
    assert code == 0 and "tiny-int8-pte" in out and "(emulated)" in out
    code, out, _ = _cli(capsys, "results", "show", "--results", db, "--format", "csv")
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == 4  # latest per artifact/device/threads
    code, out, _ = _cli(capsys, "results", "export", "--results", db, "--format", "json", "--out", str(tmp_path / "e.json"))
    assert code == 0 and len(json.loads((tmp_path / "e.json").read_text())) == 6
    code, out, _ = _cli(capsys, "compare", str(filled_store.run_id), str(filled_store.second_run_id), "--results", db)
    assert code == 0 and "B/A p50" in out and "tiny-int8-pte on local" in out and "verdict basis" in out
    code, out, _ = _cli(capsys, "compare", "tiny-fp32-pte", "tiny-int8-pte", "--results", db, "--format", "json")
    assert code == 0 and json.loads(out)["kind"] == "artifacts"
    code, out, _ = _cli(capsys, "report", "--results", db, "--out", str(tmp_path / "rep"))
    assert code == 0 and (tmp_path / "rep" / "report.html").is_file()
    code, _, err = _cli(capsys, "compare", "1", "local", "--results", db)
    assert code == 2 and err.count("\n") == 1 and "compare two runs" in err
    code, _, err = _cli(capsys, "results", "list", "--results", str(tmp_path / "none.db"))
    assert code == 2 and "no such file" in err and not (tmp_path / "none.db").exists()


def test_cli_bench_says_when_compressed_is_not_faster_than_its_twin(filled_store, store_copy, digits16, bundles_dir,
                                                                     capsys, monkeypatch):
    """`edgekit bench` pairs the new measurement with its uncompressed twin in the store and prints the ratio."""
    from kit.cli import _ui
    from kit.package import package

    monkeypatch.setattr(_ui.stdout, "_width", 300)
    db = str(store_copy)
    # A "compressed" build that does ~30x the work of the fp32 twin: the kit must say it is slower.
    torch.manual_seed(0)
    slow = package(_Slower().eval(), "executorch", bundles_dir / "tiny-slow-int8-pte", digits16.test.x[:1], name="tiny")
    code, out, _ = _cli(capsys, "bench", str(slow.path), "--device", "local", "--results", db, "--runs", str(BENCH_RUNS),
                        "--variant", "tiny-int8-slow-pte")
    assert code == 0, out
    line = re.search(r"not faster: tiny-int8-slow-pte is (\d\.\d\d)x tiny-fp32-pte on local \(slower beyond noise", out)
    assert line and float(line.group(1)) < 0.5, out
    # Benching the uncompressed twin lists every compressed artifact of the same model against it.
    code, out, _ = _cli(capsys, "bench", str(filled_store.variants["tiny-fp32-pte"].path), "--device", "local",
                        "--results", db, "--runs", str(BENCH_RUNS), "--variant", "tiny-fp32-pte")
    assert code == 0 and "tiny-int8-slow-pte is" in out and re.search(r"tiny-int8-pte is \d\.\d\dx tiny-fp32-pte on local", out), out
    # The .onnx of the same model has no uncompressed twin other than itself: no line for it.
    assert "tiny-fp32-onnx is" not in out
