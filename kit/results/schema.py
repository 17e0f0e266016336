"""The results store's schema: versioned DDL and the migrations between versions.

Schema versions live in PRAGMA user_version. A new file is built by running every migration in
order from version 0, so a fresh store and a migrated one are the same schema by construction.
Each migration runs in one transaction: a failure leaves the file at its previous version.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

from kit.errors import EdgeKitError

SCHEMA_VERSION = 3

# Version 1, as shipped first (kept verbatim: it is the starting point of every migration).
SCHEMA_V1 = """
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

# Version 2: models and recipes behind each artifact, device emulation flag, energy/thermal as
# queryable columns, fleet rollouts, and an index for find_measurement. The rollout tables are
# IF NOT EXISTS: kit/fleet/rollout_state.py may have created them on a v1 store already.
SCHEMA_V2 = """
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source TEXT,
    info_json TEXT,
    created REAL
);
CREATE TABLE recipes (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    name TEXT,
    recipe_json TEXT NOT NULL,
    created REAL
);
ALTER TABLE artifacts ADD COLUMN model_id INTEGER REFERENCES models(id);
ALTER TABLE artifacts ADD COLUMN recipe_id INTEGER REFERENCES recipes(id);
ALTER TABLE artifacts ADD COLUMN accuracy_n INTEGER;
ALTER TABLE artifacts ADD COLUMN created REAL;
ALTER TABLE devices ADD COLUMN emulated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN updated REAL;
ALTER TABLE runs ADD COLUMN finished REAL;
ALTER TABLE runs ADD COLUMN options_json TEXT;
ALTER TABLE measurements ADD COLUMN min_ms REAL;
ALTER TABLE measurements ADD COLUMN max_ms REAL;
ALTER TABLE measurements ADD COLUMN mean_power_w REAL;
ALTER TABLE measurements ADD COLUMN energy_mj REAL;
ALTER TABLE measurements ADD COLUMN throttled INTEGER;
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY,
    bundle_id TEXT,
    model_name TEXT,
    group_name TEXT,
    started REAL,
    finished REAL,
    status TEXT,
    options_json TEXT
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL,
    stage TEXT,
    status TEXT,
    previous_bundle_id TEXT,
    error TEXT,
    updated REAL,
    PRIMARY KEY (rollout_id, device)
);
CREATE INDEX measurements_by_artifact_device ON measurements(artifact_id, device_id, threads);
CREATE INDEX measurements_by_run ON measurements(run_id);
"""

# Version 3 (issue 16): the memory split as queryable columns, and per-operator profiles (the table
# the kit parsed and the raw bytes the device sent: ETDump or ORT trace JSON) beside the measurement.
SCHEMA_V3 = """
ALTER TABLE measurements ADD COLUMN runtime_import_mb REAL;
ALTER TABLE measurements ADD COLUMN model_load_mb REAL;
ALTER TABLE measurements ADD COLUMN inference_peak_mb REAL;
ALTER TABLE measurements ADD COLUMN planned_mb REAL;
CREATE TABLE profiles (
    measurement_id INTEGER PRIMARY KEY REFERENCES measurements(id),
    format TEXT,
    ops_json TEXT,
    raw BLOB
);
"""


def memory_columns(raw: dict | None) -> dict:
    """v3's memory columns from the agent's result (older agents: only what they sent)."""
    mem = (raw or {}).get("memory") or {}
    import_mb = mem.get("runtime_import_mb")
    return {"runtime_import_mb": import_mb if import_mb is not None else mem.get("runtime_rss_mb", (raw or {}).get("rss_after_import_mb")),
            "model_load_mb": mem.get("model_load_mb"), "inference_peak_mb": mem.get("inference_peak_rss_mb"),
            "planned_mb": mem.get("planned_mb")}


def _backfill_v3(db: sqlite3.Connection) -> None:
    for m_id, raw in db.execute("SELECT id, raw_json FROM measurements").fetchall():
        c = memory_columns(loads(raw, {}))
        db.execute("UPDATE measurements SET runtime_import_mb=?, model_load_mb=?, inference_peak_mb=?, planned_mb=? WHERE id=?",
                   (c["runtime_import_mb"], c["model_load_mb"], c["inference_peak_mb"], c["planned_mb"], m_id))


def loads(text, default=None):
    if text is None:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def derived_columns(raw: dict | None, power: dict | None, thermal: dict | None) -> dict:
    """Columns v2 pulls out of the agent's JSON so SQL can filter and sort on them."""
    lat = (raw or {}).get("latency") or {}
    power = power or {}
    thermal = thermal or {}
    throttled = thermal.get("throttled")
    return {
        "min_ms": lat.get("min_ms"),
        "max_ms": lat.get("max_ms"),
        "mean_power_w": power.get("mean_w") if power.get("available") else None,
        "energy_mj": power.get("energy_mj_per_inference") if power.get("available") else None,
        "throttled": None if throttled is None else int(bool(throttled)),
    }


def _backfill_v2(db: sqlite3.Connection) -> None:
    """Fill v2's new columns from what v1 rows already hold (JSON blobs, artifact names)."""
    now = time.time()
    db.execute("INSERT OR IGNORE INTO models (name, created) SELECT DISTINCT name, ? FROM artifacts WHERE name IS NOT NULL", (now,))
    db.execute("UPDATE artifacts SET model_id = (SELECT id FROM models WHERE models.name = artifacts.name)")
    for art_id, manifest_json in db.execute("SELECT id, manifest_json FROM artifacts").fetchall():
        recipe = (loads(manifest_json, {}) or {}).get("recipe")
        if isinstance(recipe, dict):
            db.execute("UPDATE artifacts SET recipe_id = ? WHERE id = ?", (insert_recipe(db, recipe), art_id))
    for dev_id, info_json in db.execute("SELECT id, info_json FROM devices").fetchall():
        db.execute("UPDATE devices SET emulated = ? WHERE id = ?", (int(bool((loads(info_json, {}) or {}).get("emulated"))), dev_id))
    rows = db.execute("SELECT id, raw_json, power_json, thermal_json FROM measurements").fetchall()
    for m_id, raw, power, thermal in rows:
        d = derived_columns(loads(raw, {}), loads(power, {}), loads(thermal, {}))
        db.execute("UPDATE measurements SET min_ms=?, max_ms=?, mean_power_w=?, energy_mj=?, throttled=? WHERE id=?",
                   (d["min_ms"], d["max_ms"], d["mean_power_w"], d["energy_mj"], d["throttled"], m_id))


def insert_recipe(db: sqlite3.Connection, recipe: dict) -> int:
    # Identity from the canonical (key-sorted) JSON; the stored text keeps the author's order.
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()
    db.execute("INSERT OR IGNORE INTO recipes (sha256, name, recipe_json, created) VALUES (?, ?, ?, ?)",
               (digest, recipe.get("name"), json.dumps(recipe, default=str), time.time()))
    return db.execute("SELECT id FROM recipes WHERE sha256 = ?", (digest,)).fetchone()[0]


# version reached -> (DDL script, data step). Scripts are split on ';' and run statement by
# statement inside one explicit transaction (sqlite3.executescript would commit on its own).
MIGRATIONS = {1: (SCHEMA_V1, None), 2: (SCHEMA_V2, _backfill_v2), 3: (SCHEMA_V3, _backfill_v3)}


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite3.Connection, path) -> None:
    """Bring the file at `path` (open as `db`) to SCHEMA_VERSION; refuse a newer file."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise EdgeKitError(f"results store {path} has schema version {version}, newer than this kit's {SCHEMA_VERSION}; upgrade edgekit")
    if version == SCHEMA_VERSION:
        return
    # SQLite's recommended migration procedure: foreign keys off (it cannot change inside a transaction).
    db.execute("PRAGMA foreign_keys = OFF")
    old_isolation = db.isolation_level
    db.isolation_level = None  # explicit BEGIN/COMMIT below
    try:
        while True:
            db.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: another process may have migrated meanwhile.
                current = schema_version(db)
                if current >= SCHEMA_VERSION:
                    db.execute("COMMIT")
                    break
                ddl, data_step = MIGRATIONS[current + 1]
                for stmt in ddl.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                if data_step is not None:
                    data_step(db)
                db.execute(f"PRAGMA user_version = {current + 1}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
    finally:
        db.isolation_level = old_isolation
        db.execute("PRAGMA foreign_keys = ON")
