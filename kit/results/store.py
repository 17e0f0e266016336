"""The results store: one SQLite file with a versioned schema.

Every measurement the kit takes lands here: which artifact (by sha256, built from which model by
which recipe), on which device (with its `info`), with which runtime and threads, the latency
statistics and raw repetitions, memory, power/energy, thermal flags and the accuracy measured on the
host for the same artifact. Fleet rollouts keep their state here too (kit/fleet/rollout_state.py).

Schema versions live in PRAGMA user_version. A new file is built by running every migration in
order from version 0, so a fresh store and a migrated one are the same schema by construction.
Each migration runs in one transaction: a failure leaves the file at its previous version.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from kit.errors import EdgeKitError

SCHEMA_VERSION = 2

# Version 1, as shipped first (kept verbatim: it is the starting point of every migration).
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

# Version 2: models and recipes behind each artifact, device emulation flag, energy/thermal as
# queryable columns, fleet rollouts, and an index for find_measurement. The rollout tables are
# IF NOT EXISTS: kit/fleet/rollout_state.py may have created them on a v1 store already.
_SCHEMA_V2 = """
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


def _loads(text, default=None):
    if text is None:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def _derived(raw: dict | None, power: dict | None, thermal: dict | None) -> dict:
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
        recipe = (_loads(manifest_json, {}) or {}).get("recipe")
        if isinstance(recipe, dict):
            db.execute("UPDATE artifacts SET recipe_id = ? WHERE id = ?", (_insert_recipe(db, recipe), art_id))
    for dev_id, info_json in db.execute("SELECT id, info_json FROM devices").fetchall():
        db.execute("UPDATE devices SET emulated = ? WHERE id = ?", (int(bool((_loads(info_json, {}) or {}).get("emulated"))), dev_id))
    rows = db.execute("SELECT id, raw_json, power_json, thermal_json FROM measurements").fetchall()
    for m_id, raw, power, thermal in rows:
        d = _derived(_loads(raw, {}), _loads(power, {}), _loads(thermal, {}))
        db.execute("UPDATE measurements SET min_ms=?, max_ms=?, mean_power_w=?, energy_mj=?, throttled=? WHERE id=?",
                   (d["min_ms"], d["max_ms"], d["mean_power_w"], d["energy_mj"], d["throttled"], m_id))


def _insert_recipe(db: sqlite3.Connection, recipe: dict) -> int:
    # Identity from the canonical (key-sorted) JSON; the stored text keeps the author's order.
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()
    db.execute("INSERT OR IGNORE INTO recipes (sha256, name, recipe_json, created) VALUES (?, ?, ?, ?)",
               (digest, recipe.get("name"), json.dumps(recipe, default=str), time.time()))
    return db.execute("SELECT id FROM recipes WHERE sha256 = ?", (digest,)).fetchone()[0]


# version reached -> (DDL script, data step). Scripts are split on ';' and run statement by
# statement inside one explicit transaction (sqlite3.executescript would commit on its own).
_MIGRATIONS = {1: (_SCHEMA_V1, None), 2: (_SCHEMA_V2, _backfill_v2)}


def _recipe_dict(recipe) -> dict | None:
    if recipe is None:
        return None
    if hasattr(recipe, "model_dump"):  # a pydantic Recipe from kit.recipes
        return recipe.model_dump(mode="json")
    if isinstance(recipe, dict):
        return recipe
    raise EdgeKitError(f"recipe {recipe!r}: expected a Recipe or a dict")


_MEASUREMENT_SELECT = (
    "SELECT m.*, a.variant, a.name AS model_name, a.runtime, a.format, a.size_bytes, a.sha256, a.bundle_id, "
    "a.manifest_json, a.accuracy AS artifact_accuracy, a.accuracy_n, d.name AS device, d.info_json AS device_info_json, "
    "d.emulated, r.name AS recipe_name, r.recipe_json, ru.kind AS run_kind, ru.note AS run_note "
    "FROM measurements m JOIN artifacts a ON a.id = m.artifact_id JOIN devices d ON d.id = m.device_id "
    "JOIN runs ru ON ru.id = m.run_id LEFT JOIN recipes r ON r.id = a.recipe_id"
)


class ResultsStore:
    """A SQLite results file. Open with `ResultsStore(path)`; use as a context manager to close.

    `must_exist=True` (the read-only CLI commands) refuses to create an empty store by accident.
    """

    def __init__(self, path: str | Path, *, must_exist: bool = False):
        self.path = Path(path)
        if must_exist and not self.path.is_file():
            raise EdgeKitError(f"results store {self.path}: no such file; run 'edgekit demo' or 'edgekit bench' first, "
                               "or point --db / $EDGEKIT_RESULTS at an existing store")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise EdgeKitError(f"results store {self.path}: locked by another edgekit process for 30 s; retry when it finishes") from e
            raise EdgeKitError(f"results store {self.path}: cannot use it ({e}); move it aside or choose another path") from e
        except sqlite3.DatabaseError as e:
            raise EdgeKitError(f"results store {self.path}: not a usable SQLite file ({e}); move it aside or choose another path") from e
        except OSError as e:
            raise EdgeKitError(f"results store {self.path}: cannot open ({e}); choose a writable path") from e

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise EdgeKitError(f"results store {self.path} has schema version {version}, newer than this kit's {SCHEMA_VERSION}; upgrade edgekit")
        if version == SCHEMA_VERSION:
            return
        # SQLite's recommended migration procedure: foreign keys off (it cannot change inside a transaction).
        self.db.execute("PRAGMA foreign_keys = OFF")
        old_isolation = self.db.isolation_level
        self.db.isolation_level = None  # explicit BEGIN/COMMIT below
        try:
            while True:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    # Read again under the write lock: another process may have migrated meanwhile.
                    current = self.schema_version
                    if current >= SCHEMA_VERSION:
                        self.db.execute("COMMIT")
                        break
                    ddl, data_step = _MIGRATIONS[current + 1]
                    for stmt in ddl.split(";"):
                        if stmt.strip():
                            self.db.execute(stmt)
                    if data_step is not None:
                        data_step(self.db)
                    self.db.execute(f"PRAGMA user_version = {current + 1}")
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
        finally:
            self.db.isolation_level = old_isolation
            self.db.execute("PRAGMA foreign_keys = ON")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing -------------------------------------------------------------------------
    def start_run(self, kind: str, note: str = "", options: dict | None = None) -> int:
        with self.db:
            return self.db.execute("INSERT INTO runs (started, kind, note, options_json) VALUES (?, ?, ?, ?)",
                                   (time.time(), kind, note, json.dumps(options) if options else None)).lastrowid

    def finish_run(self, run_id: int) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished = ? WHERE id = ?", (time.time(), run_id))

    def add_model(self, name: str, source: str | None = None, info: dict | None = None) -> int:
        with self.db:
            self.db.execute("INSERT INTO models (name, source, info_json, created) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                            "source=COALESCE(excluded.source, models.source), info_json=COALESCE(excluded.info_json, models.info_json)",
                            (name, source, json.dumps(info) if info else None, time.time()))
            return self.db.execute("SELECT id FROM models WHERE name = ?", (name,)).fetchone()[0]

    def add_recipe(self, recipe) -> int:
        """Store a recipe (kit.recipes.Recipe or its dict) once, keyed by the sha256 of its JSON."""
        with self.db:
            return _insert_recipe(self.db, _recipe_dict(recipe))

    def add_artifact(self, bundle, variant: str, accuracy: float | None = None, *, recipe=None,
                     accuracy_n: int | None = None) -> int:
        """Record a bundle's model file. The recipe defaults to the manifest's "recipe" entry, if any."""
        m = bundle.manifest
        recipe = _recipe_dict(recipe) or (m.get("recipe") if isinstance(m.get("recipe"), dict) else None)
        recipe_id = self.add_recipe(recipe) if recipe else None
        model_id = self.add_model(m["name"]) if m.get("name") else None
        with self.db:
            self.db.execute(
                "INSERT INTO artifacts (sha256, bundle_id, name, variant, runtime, format, size_bytes, accuracy, manifest_json, "
                "model_id, recipe_id, accuracy_n, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO UPDATE SET "
                "variant=excluded.variant, accuracy=COALESCE(excluded.accuracy, artifacts.accuracy), manifest_json=excluded.manifest_json, "
                "recipe_id=COALESCE(excluded.recipe_id, artifacts.recipe_id), accuracy_n=COALESCE(excluded.accuracy_n, artifacts.accuracy_n), "
                "model_id=COALESCE(excluded.model_id, artifacts.model_id)",
                (m["model"]["sha256"], m["bundle_id"], m.get("name"), variant, m["runtime"]["name"], m["runtime"]["format"],
                 m["model"]["size"], accuracy, json.dumps(m), model_id, recipe_id, accuracy_n, time.time()),
            )
            return self.db.execute("SELECT id FROM artifacts WHERE sha256 = ?", (m["model"]["sha256"],)).fetchone()[0]

    def add_device(self, name: str, info: dict | None = None, emulated: bool | None = None) -> int:
        """Record a device; `info` is the agent's `info` result. emulated defaults to info["emulated"]."""
        if emulated is None and info is not None and "emulated" in info:
            emulated = bool(info["emulated"])
        with self.db:
            self.db.execute("INSERT INTO devices (name, info_json, emulated, updated) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                            "info_json=COALESCE(excluded.info_json, devices.info_json), updated=excluded.updated"
                            + (", emulated=excluded.emulated" if emulated is not None else ""),
                            (name, json.dumps(info) if info else None, int(bool(emulated)), time.time()))
            return self.db.execute("SELECT id FROM devices WHERE name = ?", (name,)).fetchone()[0]

    def record(self, run_id: int, bundle, measurement, variant: str, accuracy: float | None = None, *, recipe=None,
               device_info: dict | None = None, emulated: bool | None = None, accuracy_n: int | None = None) -> int:
        """Store one kit.fleet.Measurement of `bundle`; returns the measurement id."""
        artifact_id = self.add_artifact(bundle, variant, accuracy, recipe=recipe, accuracy_n=accuracy_n)
        device_id = self.add_device(measurement.device, device_info, emulated)
        m = measurement
        d = _derived(m.raw, m.power, m.thermal)
        with self.db:
            return self.db.execute(
                "INSERT INTO measurements (run_id, artifact_id, device_id, created, threads, p50_ms, p90_ms, p99_ms, mean_ms, "
                "std_ms, cv, runs, load_ms, first_inference_ms, peak_rss_mb, reference_passed, accuracy, power_json, "
                "thermal_json, samples_json, raw_json, min_ms, max_ms, mean_power_w, energy_mj, throttled) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, artifact_id, device_id, time.time(), m.threads, m.p50_ms, m.p90_ms, m.p99_ms, m.mean_ms, m.std_ms,
                 m.cv, m.runs, m.load_ms, m.first_inference_ms, m.peak_rss_mb, int(m.reference_passed), accuracy,
                 json.dumps(m.power), json.dumps(m.thermal), json.dumps(m.raw.get("samples_ms", [])), json.dumps(m.raw),
                 d["min_ms"], d["max_ms"], d["mean_power_w"], d["energy_mj"], d["throttled"]),
            ).lastrowid

    # --- reading -------------------------------------------------------------------------
    def measurements(self, run_id: int | None = None, *, device: str | None = None, sha256: str | None = None,
                     threads: int | None = None) -> list[dict]:
        """Measurement rows joined with their artifact, device, recipe and run, oldest first."""
        where, args = [], []
        for col, val in (("m.run_id", run_id), ("d.name", device), ("a.sha256", sha256), ("m.threads", threads)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = _MEASUREMENT_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY m.id"
        return [dict(r) for r in self.db.execute(sql, args)]

    def latest_measurements(self, *, device: str | None = None, sha256: str | None = None) -> list[dict]:
        """The newest measurement per (artifact, device, threads), optionally for one device/artifact."""
        rows = self.measurements(device=device, sha256=sha256)
        latest: dict[tuple, dict] = {}
        for r in rows:  # ordered by id: later rows replace earlier ones
            latest[(r["sha256"], r["device"], r["threads"])] = r
        return sorted(latest.values(), key=lambda r: r["id"])

    def measurement(self, measurement_id: int) -> dict | None:
        """One measurement row (joined like measurements()), or None."""
        row = self.db.execute(_MEASUREMENT_SELECT + " WHERE m.id = ?", (measurement_id,)).fetchone()
        return dict(row) if row else None

    def find_measurement(self, sha256: str, device: str, threads: int) -> dict | None:
        """The newest measurement of the artifact `sha256` on `device` with `threads`, or None.

        Recipe search uses it to reuse a result instead of benching the same artifact again.
        """
        row = self.db.execute(_MEASUREMENT_SELECT + " WHERE a.sha256 = ? AND d.name = ? AND m.threads = ? ORDER BY m.id DESC LIMIT 1",
                              (sha256, device, threads)).fetchone()
        return dict(row) if row else None

    def runs(self) -> list[dict]:
        sql = ("SELECT ru.*, COUNT(m.id) AS measurements, GROUP_CONCAT(DISTINCT d.name) AS devices "
               "FROM runs ru LEFT JOIN measurements m ON m.run_id = ru.id LEFT JOIN devices d ON d.id = m.device_id "
               "GROUP BY ru.id ORDER BY ru.id")
        return [dict(r) for r in self.db.execute(sql)]

    def run(self, run_id: int) -> dict:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            last = self.db.execute("SELECT MAX(id) FROM runs").fetchone()[0]
            raise EdgeKitError(f"results store {self.path}: no run {run_id} (runs go up to {last}); list them with 'edgekit results list'")
        return dict(row)

    def devices(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM devices ORDER BY id")]

    def artifacts(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM artifacts ORDER BY id")]


def decode(row: dict) -> dict:
    """A measurement row with its JSON columns parsed (samples list, power/thermal dicts, ...)."""
    out = {k: v for k, v in row.items() if not k.endswith("_json")}
    for key in ("power", "thermal", "samples", "raw", "manifest", "device_info", "recipe"):
        if f"{key}_json" in row:
            out[key] = _loads(row[f"{key}_json"])
    if "emulated" in out:
        out["emulated"] = bool(out["emulated"])
    for key in ("reference_passed", "throttled"):
        if out.get(key) is not None:
            out[key] = bool(out[key])
    return out
