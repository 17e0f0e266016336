"""Staged canary rollout of one bundle to a group of devices, with a health gate and rollback.

    rollout(bundle, entries, group, options=RolloutOptions(canary=1, batch_size=10, max_failures=0))

Order: the first `canary` devices, then batches of `batch_size`, each wave in parallel (a
kit.fleet.Group). Per device (device_update.py): status (what runs now) -> push (stage the
bundle) -> activate (atomic switch on the device) -> health gate (the agent benches the activated
version: reference check + latency budget). A device whose gate fails is switched back at once.
When failures exceed `max_failures`, no new device is started and every device this rollout
switched is rolled back to its previous version.

A lost link is retried with exponential backoff (kit.errors.LinkLost is retryable; every step is
idempotent on the device); a failed health gate, a refused bundle or a rejected host key never
is. State goes to the results store as it changes (rollout_state.py), so a killed host process
resumes with `resume=True`, and a second run of the same rollout is a no-op.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from kit.errors import EdgeKitError
from kit.fleet import rollout_state as rs
from kit.fleet.device_update import DeviceUpdate, UpdateJob, roll_back_device
from kit.fleet.health import latency_budget
from kit.fleet.options import RolloutOptions
from kit.fleet.rollout_state import DeviceState, RolloutState

if TYPE_CHECKING:
    from kit.package.bundle import Bundle

DeviceFn = Optional[Callable[[DeviceState], None]]

__all__ = ["RolloutOptions", "RolloutResult", "rollout", "version_label"]  # RolloutOptions: its home is options.py


@dataclass
class RolloutResult:
    rollout_id: int
    status: str
    bundle_id: str
    model_name: str
    group: str
    failures: int
    devices: list[DeviceState] = field(default_factory=list)

    def runs(self, device: DeviceState) -> str:
        return version_label(device, self.bundle_id)

    def to_dict(self) -> dict:
        d = asdict(self)
        for dev, state in zip(d["devices"], self.devices):
            dev["runs"] = self.runs(state)
        return d


def version_label(d: DeviceState, bundle_id: str) -> str:
    """'new' | 'previous' | 'unknown': which version the record says the device runs."""
    if d.running_bundle_id == bundle_id:
        return "new"
    if d.running_bundle_id is not None or d.stage in ("pending", "status", "push"):
        return "previous"  # confirmed, or never got as far as the switch
    return "unknown"


class _Runner:
    """Drives one rollout record. Workers send events; only this (the calling) thread writes the store."""

    def __init__(self, state: RolloutState, record: rs.RolloutRecord, bundle: "Bundle", entries: dict,
                 opts: RolloutOptions, connect, progress: DeviceFn):
        self.state, self.rec, self.opts, self.progress = state, record, opts, progress
        self.devices = {d.device: d for d in record.devices}
        self.order = [d.device for d in sorted(record.devices, key=lambda d: d.position)]
        self.events: queue.Queue = queue.Queue()
        self.attempts: dict[str, int] = {}  # per device, counted by its own worker
        self.group = opts.group([entries[n] for n in self.order], connect=connect, on_retry=self._on_retry)
        self.job = UpdateJob(record.bundle_id, record.model_name, bundle.path, opts, latency_budget(bundle, opts),
                             threading.Event())

    def failures(self) -> int:
        return sum(d.status in rs.FAILURE_STATUSES for d in self.devices.values())

    def _apply(self, name: str, fields: dict) -> None:
        d = self.devices[name]
        for k, v in fields.items():
            setattr(d, k, v)
        self.state.update_device(self.rec.id, name, **fields)
        if self.failures() > self.opts.max_failures:
            self.job.stop.set()
        if self.progress:
            self.progress(d)

    def _pump(self, timeout: float) -> None:
        """Record the workers' events (waits up to `timeout` for the first)."""
        try:
            self._apply(*(self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()))
            while True:
                self._apply(*self.events.get_nowait())
        except queue.Empty:
            pass

    def _on_retry(self, name: str, attempt: int, err: BaseException) -> None:
        self.attempts[name] += 1
        self.events.put((name, {"attempts": self.attempts[name],
                                "error": f"retry {attempt}: {type(err).__name__}: {str(err)[:160]}"}))

    def _each(self, names: list[str], work) -> None:
        """work(job, device, recorded state, emit) on these devices at once."""
        snapshot = {n: DeviceState(**asdict(self.devices[n])) for n in names}
        self.attempts.update({n: self.devices[n].attempts for n in names})

        def one(dev):
            work(self.job, dev, snapshot[dev.name], lambda **f: self.events.put((dev.name, f)))

        self.group.run(one, only=names, while_waiting=self._pump)

    def run(self) -> str:
        order, opts = self.order, self.opts
        if self.rec.status == rs.RUNNING:
            waves = [order[:opts.canary]] + [order[i:i + opts.batch_size] for i in range(opts.canary, len(order), opts.batch_size)]
            for wave in waves:
                if self.failures() > opts.max_failures:
                    break
                self._each([n for n in wave if self.devices[n].status not in rs.DONE_STATUSES], _update)
            if self.failures() > opts.max_failures:
                self.state.set_status(self.rec.id, rs.ROLLING_BACK)
                self.rec.status = rs.ROLLING_BACK
        if self.rec.status == rs.ROLLING_BACK:
            # Everything this rollout may have switched, including devices lost mid-switch; the
            # agent's --expect-current guard makes this a no-op where the new version is not current.
            self._each([n for n in order if self._maybe_switched(self.devices[n])], roll_back_device)
            for n in order:
                if self.devices[n].status == rs.PENDING:
                    self._apply(n, {"status": rs.SKIPPED, "error": "not started: the rollout stopped"})
            final = rs.STOPPED
        else:
            # A device whose gate failed but whose switch-back was cut off still runs the bad
            # version: try once more before calling the rollout done.
            stuck = [n for n in order if self.devices[n].status == rs.FAILED
                     and self.devices[n].running_bundle_id in (self.rec.bundle_id, None)
                     and self.devices[n].stage in ("activate", "gate", "rollback")]
            self._each(stuck, roll_back_device)
            final = rs.SUCCEEDED
        self.state.set_status(self.rec.id, final, finished=True)
        return final

    def _maybe_switched(self, d: DeviceState) -> bool:
        if d.status in (rs.UNCHANGED, rs.ROLLED_BACK, rs.PENDING, rs.SKIPPED):
            return False
        return not (d.status == rs.UNREACHABLE and version_label(d, self.rec.bundle_id) == "previous")


def _update(job: UpdateJob, dev, state: DeviceState, emit) -> None:
    DeviceUpdate(job, dev, state, emit).run()


def _open_record(state: RolloutState, bundle: "Bundle", model: str, group: str, names: list[str],
                 opts: RolloutOptions, resume: bool) -> tuple[rs.RolloutRecord, RolloutOptions]:
    """The record to drive: the group's unfinished one (resume), else a new one; and its options."""
    open_rec = state.unfinished(None, group)
    if not resume:
        if open_rec is not None:
            raise EdgeKitError(f"group {group}: rollout {open_rec.id} of bundle {open_rec.bundle_id} is unfinished "
                               f"({open_rec.status}); continue it with --resume")
        return state.get(state.create(bundle.bundle_id, model, group, names, asdict(opts))), opts
    if open_rec is None:
        raise EdgeKitError(f"group {group}: no unfinished rollout to resume in {state.store.path}; start one without --resume")
    if open_rec.bundle_id != bundle.bundle_id:
        raise EdgeKitError(f"group {group}: the unfinished rollout {open_rec.id} is of bundle {open_rec.bundle_id}, "
                           f"not {bundle.bundle_id}; resume with that bundle")
    missing = [d.device for d in open_rec.devices if d.device not in names]
    if missing:
        raise EdgeKitError(f"group {group}: rollout {open_rec.id} includes {', '.join(missing)}, no longer in the group; "
                           f"add them back to the inventory to resume")
    known = asdict(opts)
    return open_rec, RolloutOptions(**{**known, **{k: v for k, v in open_rec.options.items() if k in known}})


def rollout(bundle: "Bundle | str | Path", entries: list, group: str, *, options: RolloutOptions | None = None,
            store_path: str | Path | None = None, resume: bool = False, model_name: str | None = None,
            connect=None, progress: DeviceFn = None) -> RolloutResult:
    """Roll `bundle` out to `entries` (DeviceEntry list, canaries first). See the module docstring."""
    from kit.config import results_path
    from kit.package.bundle import Bundle

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    model = model_name or bundle.manifest.get("name") or "model"
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise EdgeKitError(f"group {group}: a device is listed twice; device names must be unique")
    if not names:
        raise EdgeKitError(f"group {group}: no devices to roll out to")
    with RolloutState(store_path or results_path()) as state:
        record, opts = _open_record(state, bundle, model, group, names, options or RolloutOptions(), resume)
        runner = _Runner(state, record, bundle, {e.name: e for e in entries}, opts, connect, progress)
        status = runner.run()
        final = state.get(record.id)
    return RolloutResult(rollout_id=final.id, status=status, bundle_id=final.bundle_id, model_name=final.model_name,
                         group=group, failures=sum(d.status in rs.FAILURE_STATUSES for d in final.devices), devices=final.devices)
