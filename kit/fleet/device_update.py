"""One device's part in a rollout, as steps: status -> push -> activate -> gate (and switching back).

Each step continues from the stage the record holds, so a resumed rollout picks up where the
killed one stopped; every step is idempotent on the device (staging verifies what is there,
activate of the running version changes nothing, rollback is guarded by --expect-current).
Steps report changes with emit(**fields); the rollout's thread writes them to the store.
A link lost for good (a retryable error left after the session's retries) makes the device
`unreachable`; any other EdgeKitError makes it `failed`; a failed health gate is never retried.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kit.errors import AgentRefused, EdgeKitError
from kit.fleet import rollout_state as rs
from kit.fleet.health import health_gate
from kit.fleet.options import RolloutOptions
from kit.fleet.rollout_state import DeviceState
from kit.fleet.session import Session

Emit = Callable[..., None]  # emit(**fields): a change to this device's record


@dataclass
class UpdateJob:
    """What every device of one rollout is brought to (read-only, shared by all workers)."""

    bundle_id: str
    model: str
    bundle_path: Path
    opts: RolloutOptions
    budget_ms: float | None
    stop: threading.Event  # set once failures exceed the limit: start nothing new


def current_version(dev: Session, model: str) -> dict:
    """The device's `current` entry for the model ({} when it runs none)."""
    models = dev.agent(["status", "--name", model], 60)["models"]
    return (models.get(model) or {}).get("current") or {}


def switch_back(dev: Session, job: UpdateJob) -> dict:
    """Back to the previous version, only if the new one is current (a no-op elsewhere)."""
    return dev.agent(["rollback", "--name", job.model, "--expect-current", job.bundle_id], 60)


class DeviceUpdate:
    """Brings one device to the job's version from its recorded stage."""

    def __init__(self, job: UpdateJob, dev: Session, state: DeviceState, emit: Emit):
        self.job, self.dev, self._emit = job, dev, emit
        self.at = state.stage                       # the stage this device is in
        self.previous = state.previous_bundle_id    # what it ran before this rollout
        self.installed: str | None = None           # the activated version's folder, from activate's answer

    def emit(self, **fields) -> None:
        self.at = fields.get("stage", self.at)
        self._emit(**fields)

    def run(self) -> None:
        if self.job.stop.is_set():
            return  # stays pending; marked skipped when the rollout stops
        steps = ((("pending", "status"), self.check_current), (("push", "activate"), self.push_and_activate),
                 (("gate",), self.gate))
        try:
            self.emit(status=rs.IN_PROGRESS)
            for stages, step in steps:
                if self.at in stages and not step():
                    return
        except EdgeKitError as e:
            if e.retryable:
                # running_bundle_id already says what is known: previous before the switch, NULL
                # while it was in flight, the new one after it.
                self.emit(status=rs.UNREACHABLE,
                          error=f"unreachable after {self.job.opts.retries} retries (stage {self.at}): {e}")
            else:
                self.emit(status=rs.FAILED, error=str(e)[:300])

    # --- the steps: each returns whether the next one should run ---------------------------------
    def check_current(self) -> bool:
        self.emit(stage="status")
        current = current_version(self.dev, self.job.model).get("bundle_id")
        if current == self.job.bundle_id:  # nothing was switched by us before this stage: it already ran it
            self.emit(stage="done", status=rs.UNCHANGED, running_bundle_id=current, error=None)
            return False
        self.previous = current
        self.emit(stage="push", previous_bundle_id=current, running_bundle_id=current or "")
        return True

    def push_and_activate(self) -> bool:
        if self.at == "push" and self.job.stop.is_set():
            self.emit(status=rs.PENDING, error=None)
            return False
        remote = self.dev.stage_bundle(self.job.bundle_path)
        self.emit(stage="activate", running_bundle_id=None)  # from here until the answer: not known
        try:
            self.installed = self.dev.agent(["activate", "--bundle", remote, "--name", self.job.model],
                                            self.job.opts.agent_timeout_s).get("installed_path")
        except AgentRefused:
            self.emit(running_bundle_id=self.previous or "")  # the agent refuses before it switches
            raise
        self.emit(stage="gate", running_bundle_id=self.job.bundle_id)
        return True

    def gate(self) -> bool:
        job = self.job
        if self.installed is None:  # resumed at the gate: ask the device where the version lives
            cur = current_version(self.dev, job.model)
            if cur.get("bundle_id") != job.bundle_id:
                raise AgentRefused(self.dev.name, "status", "not_current",
                                   f"{job.model} runs {cur.get('bundle_id')}, not {job.bundle_id}")
            self.installed = cur["path"]
        why = self._health()
        if why:  # never retried: a bad model stays bad
            self.emit(stage="rollback", status=rs.FAILED, error=why)
            self._undo(why)
        else:
            self.emit(stage="done", status=rs.UPDATED, running_bundle_id=job.bundle_id, error=None)
        return False

    def _health(self) -> str | None:
        o = self.job.opts
        bench_opts = {"runs": o.health_runs, "warmup": o.health_warmup, "threads": o.threads, "deadline_s": o.agent_timeout_s}
        entry_vars = getattr(getattr(self.dev, "entry", None), "vars", None) or {}
        for key, opt in (("cpus", "cpus"), ("cooldown_c", "cooldown_c")):  # the device's own pinning and cool-down
            value = entry_vars.get(key)
            if isinstance(value, str) and key == "cpus":  # "0,1" in an INI inventory
                value = [int(c) for c in value.split(",") if c.strip()]
            if value is not None:
                bench_opts[opt] = value
        try:
            result = self.dev.agent(["bench", "--bundle", self.installed, "--opts", json.dumps(bench_opts)],
                                    o.agent_timeout_s + 60)
        except AgentRefused as e:
            return f"health gate: {e}"
        return health_gate(result, self.job.budget_ms, o.latency_stat)

    def _undo(self, why: str) -> None:
        try:
            current = switch_back(self.dev, self.job).get("current")
            self.emit(stage="done", running_bundle_id=current or "", error=f"{why}; rolled back to {current or 'no version'}")
        except EdgeKitError as e:
            self.emit(error=f"{why}; rollback failed, still runs the new version: {str(e)[:160]}")


def roll_back_device(job: UpdateJob, dev: Session, d: DeviceState, emit: Emit) -> None:
    """The rollout stopped (or left a device on a failed version): switch `dev` back."""
    try:
        current = switch_back(dev, job).get("current") or ""
    except EdgeKitError as e:
        if e.retryable:
            emit(status=rs.UNREACHABLE, error=f"rollback: {e}")
        else:
            emit(error=f"{d.error + '; ' if d.error else ''}rollback failed: {str(e)[:200]}")
        return
    fields = {"stage": "done", "running_bundle_id": current}
    if d.status in (rs.UPDATED, rs.IN_PROGRESS):
        fields["status"] = rs.ROLLED_BACK
    if d.status == rs.FAILED and d.stage != "done":
        fields["error"] = f"{d.error or 'failed'}; rolled back to {current or 'no version'}"
    emit(**fields)
