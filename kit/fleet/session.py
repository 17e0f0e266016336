"""One device of a fleet operation: a Device whose calls are retried when the link fails.

Retry is decided by type alone: an EdgeKitError with `retryable` set (kit.errors.LinkLost and
DeviceUnreachable) is retried with exponential backoff after reconnecting; anything else (a
refused agent verb, a rejected host key, a bug) is raised at once. Every agent verb a fleet sends
is idempotent on the device, so repeating a call whose answer was lost is safe.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Optional

from kit.devices.base import result_of
from kit.errors import AgentRefused, EdgeKitError

RetryFn = Optional[Callable[[str, int, BaseException], None]]  # (device, attempt, error) before each retry


def retryable(exc: BaseException) -> bool:
    """May the same call succeed if simply tried again?"""
    return isinstance(exc, EdgeKitError) and exc.retryable


@dataclass(frozen=True)
class Retry:
    retries: int = 0          # further attempts after the first, per call
    backoff_s: float = 0.5    # first delay; doubles per attempt
    backoff_max_s: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt` (1-based), jittered so a fleet does not retry in step."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s) * random.uniform(0.8, 1.2)


class Session:
    """A device (kit.devices.base.Device methods) that connects lazily, reconnects and retries.

    `connect(entry)` opens the real device; `connect_slot()` is held while it does (the group's
    per-sshd limit)."""

    def __init__(self, entry, connect: Callable, retry: Retry = Retry(), *,
                 connect_slot: Callable[[], ContextManager] = contextlib.nullcontext, on_retry: RetryFn = None):
        self.entry, self.connect, self.retry = entry, connect, retry
        self.connect_slot, self.on_retry = connect_slot, on_retry
        self.device = None

    @property
    def name(self) -> str:
        return getattr(self.entry, "name", str(self.entry))

    @property
    def emulated(self) -> bool:
        return bool(getattr(self.entry, "emulated", False))

    def call(self, fn: Callable):
        """fn(device), reconnecting and retrying on retryable failures; the last one is raised."""
        for attempt in range(self.retry.retries + 1):
            try:
                if self.device is None:
                    with self.connect_slot():
                        self.device = self.connect(self.entry)
                return fn(self.device)
            except AgentRefused:
                raise  # the device answered: the connection is fine
            except Exception as e:
                self._drop()
                if not retryable(e) or attempt == self.retry.retries:
                    raise
                if self.on_retry:
                    self.on_retry(self.name, attempt + 1, e)
                time.sleep(self.retry.delay(attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # --- the Device protocol ----------------------------------------------------------------
    def run_agent(self, args: list[str], timeout: float = 900, on_stderr=None) -> dict:
        extra = {"on_stderr": on_stderr} if on_stderr is not None else {}
        return self.call(lambda dev: dev.run_agent(args, timeout=timeout, **extra))

    def stage_bundle(self, bundle_path: Path, progress=None) -> str:
        extra = {"progress": progress} if progress is not None else {}
        return self.call(lambda dev: dev.stage_bundle(bundle_path, **extra))

    def agent(self, args: list[str], timeout: float) -> dict:
        """The verb's result; AgentRefused(code) when the agent answered ok=false."""
        return result_of(self.name, args[0], self.run_agent(args, timeout=timeout))

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        dev, self.device = self.device, None
        if dev is not None:
            with contextlib.suppress(Exception):  # a dead link may fail to close; it is gone either way
                dev.close()
