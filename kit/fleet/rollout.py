"""Staged canary rollout of one bundle to a group of devices, with a health gate and rollback.

    rollout(bundle, entries, group, options=RolloutOptions(canary=1, batch_size=10, max_failures=0))

Order: the first `canary` devices, then batches of `batch_size`, each wave in parallel. Per device:
status (what runs now) -> push (stage the bundle) -> activate (atomic switch on the device) ->
health gate (the agent benches the activated version: reference check + latency budget). A device
whose gate fails is switched back at once. When failures exceed `max_failures`, no new device is
started and every device this rollout switched is rolled back to its previous version.

Connection failures are retried with exponential backoff (every step is idempotent on the
device); a failed health gate is never retried. Connection attempts are bounded per sshd
(host, port): OpenSSH's default MaxStartups 10:30:100 starts dropping unauthenticated connections
beyond 10 to one sshd. State goes to the results store as it changes (rollout_state.py), so a
killed host process resumes with `resume=True`, and a second run of the same rollout is a no-op.

Why threads, not asyncio: paramiko and the device duck type are blocking; each device is a short
sequence of blocking calls, and a bounded thread pool keeps the code straight-line.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from kit.errors import EdgeKitError
from kit.fleet import rollout_state as rs
from kit.fleet.rollout_state import DeviceState, RolloutState
from kit.package.bundle import Bundle

DeviceFn = Optional[Callable[[DeviceState], None]]


@dataclass
class RolloutOptions:
    canary: int = 1
    batch_size: int = 10
    max_failures: int = 0
    latency_budget_ms: float | None = None  # None: the bundle's recipe budget, if any; else no latency gate
    latency_stat: str = "p50_ms"             # which agent latency figure the budget applies to
    health_runs: int = 20
    health_warmup: int = 3
    threads: int = 1
    max_parallel: int = 32                   # devices handled at once, in all
    max_connects_per_sshd: int = 8           # < OpenSSH's MaxStartups 10
    retries: int = 4                         # per step, connection failures only
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    agent_timeout_s: float = 300.0

    def __post_init__(self):
        for name in ("canary", "batch_size", "max_parallel", "max_connects_per_sshd"):
            if int(getattr(self, name)) < 1:
                raise EdgeKitError(f"rollout option {name}={getattr(self, name)}: must be at least 1")
        if self.max_failures < 0 or self.retries < 0:
            raise EdgeKitError("rollout options max_failures and retries must be 0 or more")
        if self.latency_stat not in ("min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"):
            raise EdgeKitError(f"rollout option latency_stat={self.latency_stat!r}: use p50_ms, p90_ms, p99_ms, mean_ms, min_ms or max_ms")


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


class AgentRefused(Exception):
    """The agent answered, with ok=false: the device is reachable; retrying will not help."""

    def __init__(self, device: str, verb: str, error: dict):
        self.code = error.get("code", "?")
        super().__init__(f"{verb} on {device} failed [{self.code}]: {error.get('message', '')}")


class Unreachable(Exception):
    pass


# How the SSH transport words a lost link when it re-raises as EdgeKitError without a cause.
_LINK_PHRASES = ("cannot connect to", "stalled", "did not finish within", "connection dropped", "connection was closed",
                 "printed nothing (exit -1)", "connection reset", "broken pipe")
_PERMANENT_NAMES = ("_UnknownHostKey", "BadHostKeyException", "AuthenticationException", "PasswordRequiredException")


def is_connection_error(exc: BaseException) -> bool:
    """A failure of the link (worth a retry), not of the device's answer or our credentials."""
    try:
        import paramiko
        permanent: tuple = (paramiko.BadHostKeyException, paramiko.AuthenticationException)
        transient: tuple = (paramiko.SSHException,)
    except ImportError:  # pragma: no cover - paramiko is a dependency
        permanent, transient = (), ()
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, AgentRefused) or (permanent and isinstance(e, permanent)) or type(e).__name__ in _PERMANENT_NAMES:
            return False
        if isinstance(e, EdgeKitError) and any(p in str(e).lower() for p in _LINK_PHRASES):
            return True
        if isinstance(e, (OSError, EOFError, TimeoutError, ConnectionError)) or (transient and isinstance(e, transient)):
            return True
        if getattr(e, "transient", False):  # a transport may mark its own errors retryable
            return True
        # `raise ... from None` means the raiser classified the error itself (e.g. a full disk
        # reported over an OSError): do not second-guess it from the hidden context.
        e = e.__cause__ if (e.__cause__ is not None or e.__suppress_context__) else e.__context__
    return False


def sshd_key(entry) -> tuple:
    """Devices behind one sshd share its MaxStartups budget."""
    return (getattr(entry, "host", "") or getattr(entry, "name", "local"), int(getattr(entry, "port", 22) or 22))


class _Limits:
    """Per-sshd semaphores for connection attempts (shared by all workers of one operation)."""

    def __init__(self, per_sshd: int):
        self.per_sshd = per_sshd
        self.lock = threading.Lock()
        self.sems: dict[tuple, threading.BoundedSemaphore] = {}

    def for_entry(self, entry) -> threading.BoundedSemaphore:
        with self.lock:
            return self.sems.setdefault(sshd_key(entry), threading.BoundedSemaphore(self.per_sshd))


def _default_connect(entry):
    from kit.devices.inventory import connect

    return connect(entry)


class _Session:
    """One device's connection, reopened with backoff when the link fails."""

    def __init__(self, entry, connect, limits: _Limits, opts: RolloutOptions, on_retry=None):
        self.entry, self.connect, self.limits, self.opts = entry, connect, limits, opts
        self.on_retry = on_retry or (lambda attempt, err: None)
        self.device = None

    @property
    def name(self) -> str:
        return getattr(self.entry, "name", str(self.entry))

    def _drop(self) -> None:
        dev, self.device = self.device, None
        if dev is not None:
            try:
                dev.close()
            except Exception:
                pass

    def call(self, fn):
        last: BaseException | None = None
        for attempt in range(self.opts.retries + 1):
            try:
                if self.device is None:
                    with self.limits.for_entry(self.entry):
                        self.device = self.connect(self.entry)
                return fn(self.device)
            except AgentRefused:
                raise
            except Exception as e:
                self._drop()
                if not is_connection_error(e):
                    raise
                last = e
                if attempt == self.opts.retries:
                    break
                self.on_retry(attempt + 1, e)
                delay = min(self.opts.backoff_s * 2 ** attempt, self.opts.backoff_max_s) * random.uniform(0.8, 1.2)
                time.sleep(delay)
        raise Unreachable(f"{self.name}: {type(last).__name__}: {' '.join(str(last).split())[:200]}") from last

    def agent(self, args: list[str], timeout: float) -> dict:
        def run(dev):
            doc = dev.run_agent(args, timeout=timeout)
            if not isinstance(doc, dict) or doc.get("schema_version") != 1:
                raise EdgeKitError(f"device {self.name}: agent answered an unknown schema; update the agent")
            if not doc.get("ok"):
                raise AgentRefused(self.name, args[0], doc.get("error") or {})
            return doc["result"]
        return self.call(run)

    def close(self) -> None:
        self._drop()


def latency_budget(bundle: Bundle, opts: RolloutOptions) -> float | None:
    """The option wins; else the recipe budget the packager recorded in the manifest, if any."""
    if opts.latency_budget_ms is not None:
        return float(opts.latency_budget_ms)
    m = bundle.manifest
    for holder in (m.get("budget"), (m.get("recipe") or {}).get("budget") if isinstance(m.get("recipe"), dict) else None):
        if isinstance(holder, dict) and holder.get("latency_ms") is not None:
            return float(holder["latency_ms"])
    return None


def health_gate(result: dict, budget_ms: float | None, stat: str) -> str | None:
    """None if the bench result passes, else why not (one line)."""
    check = result.get("reference_check") or {}
    if not check.get("passed"):
        why = check.get("reason") or f"max_abs_err {check.get('max_abs_err')} > atol {check.get('atol')}"
        return f"health gate: reference check failed ({why})"
    if budget_ms is not None:
        value = (result.get("latency") or {}).get(stat)
        if value is None or value > budget_ms:
            return f"health gate: latency {stat} {value:.3f} ms exceeds the budget {budget_ms:g} ms" if value is not None \
                else f"health gate: the agent reported no {stat}"
    return None


class _Runner:
    """Drives one rollout record. Workers send events; only this (the calling) thread writes the store."""

    def __init__(self, state: RolloutState, record: rs.RolloutRecord, bundle: Bundle, entries: dict, opts: RolloutOptions,
                 connect, progress: DeviceFn):
        self.state, self.rec, self.bundle, self.entries, self.opts = state, record, bundle, entries, opts
        self.connect, self.progress = connect, progress
        self.devices = {d.device: d for d in record.devices}
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.limits = _Limits(opts.max_connects_per_sshd)
        self.budget = latency_budget(bundle, opts)

    # --- main thread -----------------------------------------------------------------------
    def failures(self) -> int:
        return sum(d.status in rs.FAILURE_STATUSES for d in self.devices.values())

    def _apply(self, name: str, fields: dict) -> None:
        d = self.devices[name]
        for k, v in fields.items():
            setattr(d, k, v)
        self.state.update_device(self.rec.id, name, **fields)
        if self.failures() > self.opts.max_failures:
            self.stop.set()
        if self.progress:
            self.progress(d)

    def _run_parallel(self, names: list[str], work) -> None:
        if not names:
            return
        with ThreadPoolExecutor(max_workers=min(self.opts.max_parallel, len(names))) as pool:
            futures = [pool.submit(work, n, DeviceState(**asdict(self.devices[n]))) for n in names]
            while True:
                try:
                    name, fields = self.events.get(timeout=0.05)
                    self._apply(name, fields)
                except queue.Empty:
                    if all(f.done() for f in futures):
                        break
            while not self.events.empty():
                self._apply(*self.events.get())
            for f in futures:
                f.result()  # a bug in a worker surfaces here, after its events are recorded

    def run(self) -> str:
        order = [d.device for d in sorted(self.devices.values(), key=lambda d: d.position)]
        if self.rec.status == rs.RUNNING:
            waves = [order[:self.opts.canary]] + [order[i:i + self.opts.batch_size]
                                                  for i in range(self.opts.canary, len(order), self.opts.batch_size)]
            for wave in waves:
                if self.failures() > self.opts.max_failures:
                    break
                todo = [n for n in wave if self.devices[n].status not in rs.DONE_STATUSES]
                self._run_parallel(todo, self._update_device)
            if self.failures() > self.opts.max_failures:
                self.state.set_status(self.rec.id, rs.ROLLING_BACK)
                self.rec.status = rs.ROLLING_BACK
        if self.rec.status == rs.ROLLING_BACK:
            # Everything this rollout may have switched, including devices lost mid-switch; the
            # agent's --expect-current guard makes this a no-op where the new version is not current.
            back = [n for n in order if self.devices[n].status not in (rs.UNCHANGED, rs.ROLLED_BACK, rs.PENDING, rs.SKIPPED)
                    and not (self.devices[n].status == rs.UNREACHABLE and version_label(self.devices[n], self.rec.bundle_id) == "previous")]
            self._run_parallel(back, self._roll_back)
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
            self._run_parallel(stuck, self._roll_back)
            final = rs.SUCCEEDED
        self.state.set_status(self.rec.id, final, finished=True)
        return final

    # --- worker threads --------------------------------------------------------------------
    def _session(self, name: str, counter: list) -> _Session:
        def on_retry(attempt, err):
            counter[0] += 1
            self.events.put((name, {"attempts": counter[0], "error": f"retry {attempt}: {type(err).__name__}: {str(err)[:160]}"}))
        return _Session(self.entries[name], self.connect, self.limits, self.opts, on_retry)

    def _current(self, s: _Session) -> dict:
        models = s.agent(["status", "--name", self.rec.model_name], 60)["models"]
        return (models.get(self.rec.model_name) or {}).get("current") or {}

    def _update_device(self, name: str, d: DeviceState) -> None:
        """status -> push -> activate -> gate, continuing from the recorded stage (all steps idempotent)."""
        if self.stop.is_set():
            return  # stays pending; marked skipped when the rollout stops
        bid, model = self.rec.bundle_id, self.rec.model_name
        s = self._session(name, [d.attempts])
        at, previous = d.stage, d.previous_bundle_id
        installed: str | None = None  # the activated version's folder, from activate's answer

        def emit(**f):
            nonlocal at
            at = f.get("stage", at)
            self.events.put((name, f))

        try:
            emit(status=rs.IN_PROGRESS)
            if at in ("pending", "status"):
                emit(stage="status")
                current = self._current(s).get("bundle_id")
                if current == bid:  # nothing was switched by us before this stage: it already ran it
                    emit(stage="done", status=rs.UNCHANGED, running_bundle_id=bid, error=None)
                    return
                previous = current
                emit(stage="push", previous_bundle_id=previous, running_bundle_id=current or "")
            if at == "push" and self.stop.is_set():
                emit(status=rs.PENDING, error=None)
                return
            if at in ("push", "activate"):
                remote = s.call(lambda dev: dev.stage_bundle(self.bundle.path))
                emit(stage="activate", running_bundle_id=None)  # from here until the answer: not known
                try:
                    installed = s.agent(["activate", "--bundle", remote, "--name", model],
                                        self.opts.agent_timeout_s).get("installed_path")
                except AgentRefused:
                    emit(running_bundle_id=previous or "")  # the agent refuses before it switches
                    raise
                emit(stage="gate", running_bundle_id=bid)
            if at == "gate":
                if installed is None:  # resumed at the gate: ask the device where the version lives
                    cur = self._current(s)
                    if cur.get("bundle_id") != bid:
                        raise AgentRefused(name, "status", {"code": "not_current",
                                                            "message": f"{model} runs {cur.get('bundle_id')}, not {bid}"})
                    installed = cur["path"]
                bench_opts = {"runs": self.opts.health_runs, "warmup": self.opts.health_warmup,
                              "threads": self.opts.threads, "deadline_s": self.opts.agent_timeout_s}
                try:
                    result = s.agent(["bench", "--bundle", installed, "--opts", json.dumps(bench_opts)],
                                     self.opts.agent_timeout_s + 60)
                    why = health_gate(result, self.budget, self.opts.latency_stat)
                except AgentRefused as e:
                    why = f"health gate: {e}"
                if why:  # never retried: a bad model stays bad
                    emit(stage="rollback", status=rs.FAILED, error=why)
                    self._switch_back(s, emit, why)
                    return
                emit(stage="done", status=rs.UPDATED, running_bundle_id=bid, error=None)
        except Unreachable as e:
            # running_bundle_id already says what is known: previous before the switch, NULL
            # while it was in flight, the new one after it.
            emit(status=rs.UNREACHABLE, error=f"unreachable after {self.opts.retries} retries (stage {at}): {e}")
        except (AgentRefused, EdgeKitError) as e:
            emit(status=rs.FAILED, error=str(e)[:300])
        finally:
            s.close()

    def _switch_back(self, s: _Session, emit, why: str) -> None:
        try:
            r = s.agent(["rollback", "--name", self.rec.model_name, "--expect-current", self.rec.bundle_id], 60)
            emit(stage="done", running_bundle_id=r.get("current") or "", error=f"{why}; rolled back to {r.get('current') or 'no version'}")
        except (Unreachable, AgentRefused, EdgeKitError) as e:
            emit(error=f"{why}; rollback failed, still runs the new version: {str(e)[:160]}")

    def _roll_back(self, name: str, d: DeviceState) -> None:
        emit = lambda **f: self.events.put((name, f))  # noqa: E731
        s = self._session(name, [d.attempts])
        try:
            r = s.agent(["rollback", "--name", self.rec.model_name, "--expect-current", self.rec.bundle_id], 60)
            current = r.get("current") or ""
            fields = {"stage": "done", "running_bundle_id": current}
            if d.status in (rs.UPDATED, rs.IN_PROGRESS):
                fields["status"] = rs.ROLLED_BACK
            if d.status == rs.FAILED and d.stage != "done":
                fields["error"] = f"{d.error or 'failed'}; rolled back to {current or 'no version'}"
            emit(**fields)
        except Unreachable as e:
            emit(status=rs.UNREACHABLE, error=f"rollback: {e}")
        except (AgentRefused, EdgeKitError) as e:
            emit(error=f"{d.error + '; ' if d.error else ''}rollback failed: {str(e)[:200]}")
        finally:
            s.close()


def rollout(bundle: Bundle | str | Path, entries: list, group: str, *, options: RolloutOptions | None = None,
            store_path: str | Path | None = None, resume: bool = False, model_name: str | None = None,
            connect=None, progress: DeviceFn = None) -> RolloutResult:
    """Roll `bundle` out to `entries` (DeviceEntry list, canaries first). See the module docstring."""
    from kit.config import results_path

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    opts = options or RolloutOptions()
    model = model_name or bundle.manifest.get("name") or "model"
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise EdgeKitError(f"group {group}: a device is listed twice; device names must be unique")
    if not names:
        raise EdgeKitError(f"group {group}: no devices to roll out to")
    with RolloutState(store_path or results_path()) as state:
        open_rec = state.unfinished(None, group)
        if resume:
            if open_rec is None:
                raise EdgeKitError(f"group {group}: no unfinished rollout to resume in {state.store.path}; start one without --resume")
            if open_rec.bundle_id != bundle.bundle_id:
                raise EdgeKitError(f"group {group}: the unfinished rollout {open_rec.id} is of bundle {open_rec.bundle_id}, "
                                   f"not {bundle.bundle_id}; resume with that bundle")
            record = open_rec
            opts = RolloutOptions(**{**asdict(opts), **{k: v for k, v in record.options.items() if k in asdict(opts)}})
            missing = [d.device for d in record.devices if d.device not in names]
            if missing:
                raise EdgeKitError(f"group {group}: rollout {record.id} includes {', '.join(missing)}, no longer in the group; "
                                   f"add them back to the inventory to resume")
        else:
            if open_rec is not None:
                raise EdgeKitError(f"group {group}: rollout {open_rec.id} of bundle {open_rec.bundle_id} is unfinished "
                                   f"({open_rec.status}); continue it with --resume")
            rid = state.create(bundle.bundle_id, model, group, names, asdict(opts))
            record = state.get(rid)
        by_name = {e.name: e for e in entries}
        runner = _Runner(state, record, bundle, by_name, opts, connect or _default_connect, progress)
        status = runner.run()
        final = state.get(record.id)
    return RolloutResult(rollout_id=final.id, status=status, bundle_id=final.bundle_id, model_name=final.model_name,
                         group=group, failures=sum(d.status in rs.FAILURE_STATUSES for d in final.devices), devices=final.devices)


# --- group operations outside a rollout ---------------------------------------------------

def _map_devices(entries: list, fn, *, connect=None, options: RolloutOptions | None = None) -> list[dict]:
    """fn(session) on every device in parallel (bounded, with retries); a row per device."""
    opts = options or RolloutOptions(retries=1)
    limits = _Limits(opts.max_connects_per_sshd)
    connect = connect or _default_connect

    def one(entry) -> dict:
        s = _Session(entry, connect, limits, opts)
        try:
            return {"device": entry.name, "ok": True, **fn(s)}
        except Unreachable as e:
            return {"device": entry.name, "ok": False, "error": f"unreachable: {e}"}
        except (AgentRefused, EdgeKitError) as e:
            return {"device": entry.name, "ok": False, "error": str(e)}
        finally:
            s.close()

    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=min(opts.max_parallel, len(entries))) as pool:
        return list(pool.map(one, entries))


def fleet_status(entries: list, model_name: str | None = None, *, connect=None, options: RolloutOptions | None = None) -> list[dict]:
    """What each device runs: rows {device, ok, models: {name: {current, previous, ...}} | error}."""
    args = ["status"] + (["--name", model_name] if model_name else [])
    return _map_devices(entries, lambda s: {"models": s.agent(args, 60)["models"]}, connect=connect, options=options)


def rollback_group(entries: list, model_name: str, *, expect_current: str | None = None, connect=None,
                   options: RolloutOptions | None = None) -> list[dict]:
    """Switch every device's `model_name` back to its previous version; rows {device, ok, current, previous, changed}."""
    args = ["rollback", "--name", model_name] + (["--expect-current", expect_current] if expect_current else [])
    return _map_devices(entries, lambda s: s.agent(args, 60), connect=connect, options=options)
