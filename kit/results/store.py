"""The results store: one SQLite file with a versioned schema.

Every measurement the kit takes lands here: which artifact (by sha256), on which device, with
which runtime and threads, the latency statistics and raw repetitions, memory, power, thermal
flags and the accuracy measured on the host for the same artifact.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from kit.errors import EdgeKitError

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    bundle_id TEXT,
    name TEXT,
    variant TEXT,
    runtime TEXT,
    format TEXT,
    size_bytes INTEGER,
    accuracy REAL,
    manifest_json TEXT
);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    info_json TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    kind TEXT NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    device_id INTEGER NOT NULL REFERENCES devices(id),
    created REAL NOT NULL,
    threads INTEGER,
    p50_ms REAL, p90_ms REAL, p99_ms REAL, mean_ms REAL, std_ms REAL, cv REAL, runs INTEGER,
    load_ms REAL, first_inference_ms REAL, peak_rss_mb REAL,
    reference_passed INTEGER,
    accuracy REAL,
    power_json TEXT, thermal_json TEXT, samples_json TEXT, raw_json TEXT
);
"""


class ResultsStore:
    """A SQLite results file. Open with `ResultsStore(path)`; use as a context manager to close."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path))
        except (OSError, sqlite3.Error) as e:
            raise EdgeKitError(f"results store {self.path}: cannot open ({e}); choose a writable path") from e
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise EdgeKitError(f"results store {self.path} has schema version {version}, newer than this kit's {SCHEMA_VERSION}; upgrade edgekit")
        with self.db:
            if version < 1:
                self.db.executescript(_SCHEMA_V1)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing -------------------------------------------------------------------------
    def start_run(self, kind: str, note: str = "") -> int:
        with self.db:
            return self.db.execute("INSERT INTO runs (started, kind, note) VALUES (?, ?, ?)", (time.time(), kind, note)).lastrowid

    def add_artifact(self, bundle, variant: str, accuracy: float | None = None) -> int:
        m = bundle.manifest
        with self.db:
            self.db.execute(
                "INSERT INTO artifacts (sha256, bundle_id, name, variant, runtime, format, size_bytes, accuracy, manifest_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO UPDATE SET "
                "variant=excluded.variant, accuracy=COALESCE(excluded.accuracy, artifacts.accuracy), manifest_json=excluded.manifest_json",
                (m["model"]["sha256"], m["bundle_id"], m.get("name"), variant, m["runtime"]["name"], m["runtime"]["format"],
                 m["model"]["size"], accuracy, json.dumps(m)),
            )
            return self.db.execute("SELECT id FROM artifacts WHERE sha256 = ?", (m["model"]["sha256"],)).fetchone()[0]

    def add_device(self, name: str, info: dict | None = None) -> int:
        with self.db:
            self.db.execute("INSERT INTO devices (name, info_json) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                            "info_json=COALESCE(excluded.info_json, devices.info_json)", (name, json.dumps(info) if info else None))
            return self.db.execute("SELECT id FROM devices WHERE name = ?", (name,)).fetchone()[0]

    def record(self, run_id: int, bundle, measurement, variant: str, accuracy: float | None = None) -> int:
        artifact_id = self.add_artifact(bundle, variant, accuracy)
        device_id = self.add_device(measurement.device)
        m = measurement
        with self.db:
            return self.db.execute(
                "INSERT INTO measurements (run_id, artifact_id, device_id, created, threads, p50_ms, p90_ms, p99_ms, mean_ms, "
                "std_ms, cv, runs, load_ms, first_inference_ms, peak_rss_mb, reference_passed, accuracy, power_json, "
                "thermal_json, samples_json, raw_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, artifact_id, device_id, time.time(), m.threads, m.p50_ms, m.p90_ms, m.p99_ms, m.mean_ms, m.std_ms,
                 m.cv, m.runs, m.load_ms, m.first_inference_ms, m.peak_rss_mb, int(m.reference_passed), accuracy,
                 json.dumps(m.power), json.dumps(m.thermal), json.dumps(m.raw.get("samples_ms", [])), json.dumps(m.raw)),
            ).lastrowid

    # --- reading -------------------------------------------------------------------------
    def measurements(self, run_id: int | None = None) -> list[dict]:
        sql = ("SELECT m.*, a.variant, a.name AS model_name, a.runtime, a.format, a.size_bytes, a.sha256, a.bundle_id, "
               "a.manifest_json, d.name AS device FROM measurements m JOIN artifacts a ON a.id = m.artifact_id "
               "JOIN devices d ON d.id = m.device_id")
        args: tuple = ()
        if run_id is not None:
            sql += " WHERE m.run_id = ?"
            args = (run_id,)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY m.id", args)]
