"""The results store: one SQLite file with a versioned schema.

Every measurement the kit takes lands here: which artifact (by sha256, built from which model by
which recipe), on which device (with its `info`), with which runtime and threads, the latency
statistics and raw repetitions, memory, power/energy, thermal flags and the accuracy measured on the
host for the same artifact. Fleet rollouts keep their state here too (kit/fleet/rollout_state.py).

The schema and its migrations are kit/results/schema.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from kit.errors import EdgeKitError
from kit.results.schema import (SCHEMA_VERSION, derived_columns, insert_recipe, loads, memory_columns, migrate,
                                schema_version)

__all__ = ["ResultsStore", "decode", "SCHEMA_VERSION"]


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
            migrate(self.db, self.path)
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
        return schema_version(self.db)

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
            return insert_recipe(self.db, _recipe_dict(recipe))

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
        d = derived_columns(m.raw, m.power, m.thermal)
        mem = memory_columns(m.raw)
        raw = dict(m.raw)
        sent = raw.pop("profile", None)  # the raw bytes go to the profiles table, not into raw_json
        if isinstance(sent, dict):
            raw["profile"] = {k: v for k, v in sent.items() if k != "data"}
        with self.db:
            mid = self.db.execute(
                "INSERT INTO measurements (run_id, artifact_id, device_id, created, threads, p50_ms, p90_ms, p99_ms, mean_ms, "
                "std_ms, cv, runs, load_ms, first_inference_ms, peak_rss_mb, reference_passed, accuracy, power_json, "
                "thermal_json, samples_json, raw_json, min_ms, max_ms, mean_power_w, energy_mj, throttled) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, artifact_id, device_id, time.time(), m.threads, m.p50_ms, m.p90_ms, m.p99_ms, m.mean_ms, m.std_ms,
                 m.cv, m.runs, m.load_ms, m.first_inference_ms, m.peak_rss_mb, int(m.reference_passed), accuracy,
                 json.dumps(m.power), json.dumps(m.thermal), json.dumps(m.raw.get("samples_ms", [])), json.dumps(raw),
                 d["min_ms"], d["max_ms"], d["mean_power_w"], d["energy_mj"], d["throttled"]),
            ).lastrowid
            self.db.execute("UPDATE measurements SET runtime_import_mb=?, model_load_mb=?, inference_peak_mb=?, planned_mb=? WHERE id=?",
                            (mem["runtime_import_mb"], mem["model_load_mb"], mem["inference_peak_mb"], mem["planned_mb"], mid))
            table = getattr(m, "profile", None)
            if table is not None:
                self.db.execute("INSERT INTO profiles (measurement_id, format, ops_json, raw) VALUES (?, ?, ?, ?)",
                                (mid, table.get("format"), json.dumps(table), _profile_bytes(sent)))
            return mid

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

    def profile(self, measurement_id: int) -> dict | None:
        """The per-operator table stored with a measurement (kit.profiles), or None (no --profile)."""
        row = self.db.execute("SELECT ops_json FROM profiles WHERE measurement_id = ?", (measurement_id,)).fetchone()
        return loads(row[0]) if row else None

    def profile_raw(self, measurement_id: int) -> bytes | None:
        """The raw profile the device sent (ETDump or ORT trace JSON), or None."""
        row = self.db.execute("SELECT raw FROM profiles WHERE measurement_id = ?", (measurement_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

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


def _profile_bytes(sent) -> bytes | None:
    if not isinstance(sent, dict) or not sent.get("data"):
        return None
    from kit.profiles import raw_bytes

    return raw_bytes(sent)


def decode(row: dict) -> dict:
    """A measurement row with its JSON columns parsed (samples list, power/thermal dicts, ...)."""
    out = {k: v for k, v in row.items() if not k.endswith("_json")}
    for key in ("power", "thermal", "samples", "raw", "manifest", "device_info", "recipe"):
        if f"{key}_json" in row:
            out[key] = loads(row[f"{key}_json"])
    if "emulated" in out:
        out["emulated"] = bool(out["emulated"])
    for key in ("reference_passed", "throttled"):
        if out.get(key) is not None:
            out[key] = bool(out[key])
    return out
