"""A rollout's state in the results store, written as it goes.

Tables (CONTRACTS.md; the results store's schema v2 adds them, this module creates them too with
CREATE TABLE IF NOT EXISTS so it works on a v1 store):

  rollouts(id, bundle_id, model_name, group_name, started, finished, status, options_json)
  rollout_devices(rollout_id, device, stage, status, previous_bundle_id, error, updated,
                  running_bundle_id, attempts)

Every change is committed at once, so a host killed at any instant leaves a record that
`edgekit rollout --resume` continues from. `running_bundle_id` is what the device was last
confirmed to run ('' = confirmed to run no version of the model, NULL = not known: the link was
lost while the switch was in flight).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kit.errors import EdgeKitError
from kit.results.store import ResultsStore

_TABLES = """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY,
    bundle_id TEXT NOT NULL,
    model_name TEXT NOT NULL,
    group_name TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    options_json TEXT
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    previous_bundle_id TEXT,
    error TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (rollout_id, device)
);
"""
# Columns this module needs beyond the agreed ones; added in place if the table lacks them.
_EXTRA_COLUMNS = {"running_bundle_id": "TEXT", "attempts": "INTEGER NOT NULL DEFAULT 0", "position": "INTEGER"}

# Rollout status: running -> succeeded | stopped (failures exceeded the limit; switched devices
# rolled back); rolling_back is the in-between state a resume must finish.
RUNNING, ROLLING_BACK, SUCCEEDED, STOPPED = "running", "rolling_back", "succeeded", "stopped"
# Device status.
PENDING, IN_PROGRESS, UPDATED, UNCHANGED = "pending", "in_progress", "updated", "unchanged"
FAILED, UNREACHABLE, ROLLED_BACK, SKIPPED = "failed", "unreachable", "rolled_back", "skipped"
DONE_STATUSES = {UPDATED, UNCHANGED, FAILED, UNREACHABLE, ROLLED_BACK, SKIPPED}
FAILURE_STATUSES = {FAILED, UNREACHABLE}


@dataclass
class DeviceState:
    device: str
    stage: str = "pending"
    status: str = PENDING
    previous_bundle_id: str | None = None
    running_bundle_id: str | None = None
    error: str | None = None
    attempts: int = 0
    position: int = 0
    updated: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RolloutRecord:
    id: int
    bundle_id: str
    model_name: str
    group_name: str
    started: float
    finished: float | None
    status: str
    options: dict = field(default_factory=dict)
    devices: list[DeviceState] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "devices": [d.to_dict() for d in self.devices]}


class RolloutState:
    """Reads and writes rollout records in a results store (use from one thread)."""

    def __init__(self, store_path: str | Path):
        self.store = ResultsStore(store_path)
        self.db = self.store.db
        try:
            with self.db:
                self.db.executescript(_TABLES)
                have = {r["name"] for r in self.db.execute("PRAGMA table_info(rollout_devices)")}
                for col, decl in _EXTRA_COLUMNS.items():
                    if col not in have:
                        self.db.execute(f"ALTER TABLE rollout_devices ADD COLUMN {col} {decl}")
        except sqlite3.Error as e:
            raise EdgeKitError(f"results store {store_path}: cannot create the rollout tables ({e})") from e

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing -------------------------------------------------------------------------
    def create(self, bundle_id: str, model_name: str, group: str, devices: list[str], options: dict) -> int:
        now = time.time()
        with self.db:
            rid = self.db.execute(
                "INSERT INTO rollouts (bundle_id, model_name, group_name, started, status, options_json) VALUES (?,?,?,?,?,?)",
                (bundle_id, model_name, group, now, RUNNING, json.dumps(options))).lastrowid
            self.db.executemany(
                "INSERT INTO rollout_devices (rollout_id, device, stage, status, updated, position) VALUES (?,?,?,?,?,?)",
                [(rid, d, "pending", PENDING, now, i) for i, d in enumerate(devices)])
        return rid

    def update_device(self, rollout_id: int, device: str, **fields) -> None:
        allowed = {"stage", "status", "previous_bundle_id", "running_bundle_id", "error", "attempts"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown rollout_devices field(s): {sorted(bad)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.db:
            self.db.execute(f"UPDATE rollout_devices SET {cols}, updated = ? WHERE rollout_id = ? AND device = ?",
                            (*fields.values(), time.time(), rollout_id, device))

    def set_status(self, rollout_id: int, status: str, finished: bool = False) -> None:
        with self.db:
            self.db.execute("UPDATE rollouts SET status = ?, finished = ? WHERE id = ?",
                            (status, time.time() if finished else None, rollout_id))

    # --- reading -------------------------------------------------------------------------
    def get(self, rollout_id: int) -> RolloutRecord:
        row = self.db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise EdgeKitError(f"results store {self.store.path}: no rollout with id {rollout_id}")
        devices = [DeviceState(device=r["device"], stage=r["stage"], status=r["status"],
                               previous_bundle_id=r["previous_bundle_id"], running_bundle_id=r["running_bundle_id"],
                               error=r["error"], attempts=r["attempts"] or 0, position=r["position"] or 0,
                               updated=r["updated"])
                   for r in self.db.execute("SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY position, device",
                                            (rollout_id,))]
        return RolloutRecord(id=row["id"], bundle_id=row["bundle_id"], model_name=row["model_name"],
                             group_name=row["group_name"], started=row["started"], finished=row["finished"],
                             status=row["status"], options=json.loads(row["options_json"] or "{}"), devices=devices)

    def unfinished(self, bundle_id: str | None, group: str) -> RolloutRecord | None:
        """The newest rollout to `group` (of `bundle_id`, if given) that never reached a final status."""
        sql = "SELECT id FROM rollouts WHERE group_name = ? AND status IN (?, ?)"
        args: list = [group, RUNNING, ROLLING_BACK]
        if bundle_id:
            sql += " AND bundle_id = ?"
            args.append(bundle_id)
        row = self.db.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return self.get(row["id"]) if row else None

    def latest(self, group: str | None = None) -> RolloutRecord | None:
        sql, args = "SELECT id FROM rollouts", ()
        if group:
            sql, args = sql + " WHERE group_name = ?", (group,)
        row = self.db.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return self.get(row["id"]) if row else None
