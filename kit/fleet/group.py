"""Many devices at once: `Group(entries).run(fn) -> GroupResult` (in the manner of Fabric's Group).

    result = Group(entries, retry=Retry(retries=1)).run(lambda dev: {"models": dev.agent(["status"], 60)["models"]})
    result.ok, result.failed, result.results["pi5"], result.failures["pi6"], result.to_dict()

fn(device) runs once per device in a bounded thread pool; `device` is a kit.fleet.session.Session
(the Device methods, reconnecting and retrying when the link fails). An EdgeKitError from fn is
that device's named failure; any other exception is a bug and is raised once every device is done.

Connection attempts are bounded per sshd (host, port): OpenSSH's default MaxStartups 10:30:100
starts dropping unauthenticated connections beyond 10 to one sshd, and several devices (emulated
ones, containers behind one gateway) may share one.

Why threads, not asyncio: paramiko and the Device protocol are blocking; each device is a short
sequence of blocking calls, and a bounded thread pool keeps the code straight-line.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from kit.errors import EdgeKitError
from kit.fleet.session import Retry, RetryFn, Session, retryable


def sshd_key(entry) -> tuple:
    """Devices behind one sshd share its MaxStartups budget."""
    return (getattr(entry, "host", "") or getattr(entry, "name", "local"), int(getattr(entry, "port", 22) or 22))


class SshdLimits:
    """Per-sshd semaphores for connection attempts (shared by every worker of one Group)."""

    def __init__(self, per_sshd: int):
        self.per_sshd = per_sshd
        self._lock = threading.Lock()
        self._sems: dict[tuple, threading.BoundedSemaphore] = {}

    def slot(self, entry) -> threading.BoundedSemaphore:
        with self._lock:
            return self._sems.setdefault(sshd_key(entry), threading.BoundedSemaphore(self.per_sshd))


def _default_connect(entry):
    from kit.devices.inventory import connect

    return connect(entry)


@dataclass
class GroupResult:
    """Per device, in the group's order: its fn result, or its failure (a typed EdgeKitError)."""

    names: list[str] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, EdgeKitError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failed(self) -> list[str]:
        return [n for n in self.names if n in self.failures]

    @property
    def succeeded(self) -> list[str]:
        return [n for n in self.names if n in self.results]

    def rows(self) -> list[dict]:
        """One JSON-ready row per device: {device, ok: true, **result} or {device, ok: false, error, error_type}."""
        out = []
        for n in self.names:
            if n in self.failures:
                e = self.failures[n]
                row = {"device": n, "ok": False, "error": f"unreachable: {e}" if retryable(e) else str(e),
                       "error_type": type(e).__name__}
                if getattr(e, "code", None) is not None:
                    row["code"] = e.code
                out.append(row)
            elif n in self.results:
                out.append({"device": n, "ok": True, **self.results[n]})
        return out

    def to_dict(self) -> dict:
        return {"ok": self.ok, "failed": self.failed, "devices": self.rows()}


class Group:
    """Devices from inventory entries, run in parallel under per-sshd and overall limits."""

    def __init__(self, entries: Iterable, *, connect: Optional[Callable] = None, max_parallel: int = 32,
                 max_connects_per_sshd: int = 8, retry: Retry = Retry(), on_retry: RetryFn = None):
        self.entries = list(entries)
        names = [e.name for e in self.entries]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise EdgeKitError(f"device {twice[0]} is listed twice in the group; device names must be unique")
        if max_parallel < 1 or max_connects_per_sshd < 1:
            raise EdgeKitError("group limits max_parallel and max_connects_per_sshd must be at least 1")
        self.connect = connect or _default_connect
        self.max_parallel, self.retry, self.on_retry = max_parallel, retry, on_retry
        self.limits = SshdLimits(max_connects_per_sshd)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def session(self, entry) -> Session:
        """One device of the group, sharing its sshd limits and retry policy."""
        return Session(entry, self.connect, self.retry, connect_slot=lambda: self.limits.slot(entry),
                       on_retry=self.on_retry)

    def run(self, fn: Callable[[Session], Optional[dict]], *, only: Optional[Iterable[str]] = None,
            while_waiting: Optional[Callable[[float], None]] = None) -> GroupResult:
        """fn(device) on every device (or those named in `only`) at once, at most max_parallel.

        `while_waiting(seconds)` (which may block that long) is called on this thread until all
        are done, and once more with 0 after: a caller that must do its own bookkeeping on one
        thread (sqlite) does it there."""
        wanted = None if only is None else set(only)
        entries = [e for e in self.entries if wanted is None or e.name in wanted]
        result = GroupResult(names=[e.name for e in entries])
        if not entries:
            return result

        def one(entry):
            with contextlib.closing(self.session(entry)) as dev:
                try:
                    result.results[entry.name] = fn(dev) or {}
                except EdgeKitError as e:
                    result.failures[entry.name] = e

        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(entries))) as pool:
            futures = [pool.submit(one, e) for e in entries]
            if while_waiting is not None:
                while not all(f.done() for f in futures):
                    while_waiting(0.05)
                while_waiting(0)
            for f in futures:
                f.result()  # a bug in fn surfaces here, after every device finished
        return result
