"""Liveness of one agent invocation: a heartbeat on stderr, and dying with the SSH session.

- `start(verb)` runs a daemon thread that writes one short JSON line to stderr every
  HEARTBEAT_S seconds (device_agents.protocol.heartbeat_line; stdout stays the one JSON reply).
  The host (kit.devices.ssh.connection) treats a silence longer than its heartbeat timeout as a
  dead device, whatever verb is running (push receive, install, bench, health gate).
- When a heartbeat cannot be written (EPIPE/EBADF: sshd closed the session, e.g. the host gave up
  on a frozen device that was later thawed), the agent kills its children's process groups (the
  sandboxed bench child runs in its own session) and exits at once with EXIT_SESSION_LOST: no
  orphaned work goes on for a host that has gone.
- `die_with_parent()` (called in a child's preexec) asks the kernel for SIGKILL when the agent
  dies (PR_SET_PDEATHSIG through ctypes prctl; a no-op where there is no prctl).

Standard library only: this module runs on the device.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

from device_agents.protocol import heartbeat_line

HEARTBEAT_S = float(os.environ.get("EDGEKIT_HEARTBEAT_S") or 2.0)
EXIT_SESSION_LOST = 75
_PR_SET_PDEATHSIG = 1
try:  # loaded here, not after a fork: dlopen in a forked child of a threaded process may deadlock
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def die_with_parent() -> None:
    """In a freshly forked child (preexec): SIGKILL when the parent exits. Never raises."""
    if _PRCTL is None:
        return
    parent = os.getppid()
    try:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent already died between fork and prctl
        os._exit(EXIT_SESSION_LOST)


def _children() -> list[int]:
    """Direct children of this process (from /proc; empty where there is none)."""
    me, out = os.getpid(), []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for d in names:
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                    out.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return out


def session_lost() -> None:
    """The SSH session is gone: kill every child's process group (or the child), then exit now."""
    for pid in _children():
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(EXIT_SESSION_LOST)


def beat(verb: str, n: int) -> bool:
    """Write one heartbeat line (a single write, shorter than PIPE_BUF: never interleaved)."""
    try:
        os.write(2, heartbeat_line(time.monotonic(), verb, n))
        return True
    except OSError:
        return False


class Heartbeat:
    """One invocation's heartbeat thread; `stop()` ends it (an agent run in-process, as the tests
    and the forced-command dispatcher do, must not leave it beating)."""

    def __init__(self, verb: str, interval: float):
        self._stop = threading.Event()
        self._thread = None
        if interval > 0:
            self._thread = threading.Thread(target=self._loop, args=(verb, interval), name="edgekit-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _loop(self, verb: str, interval: float) -> None:
        n = 0
        while not self._stop.is_set():
            if not beat(verb, n):
                session_lost()
            n += 1
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start(verb: str, interval: float | None = None) -> Heartbeat:
    """Start the heartbeat of this invocation; use as a context manager (or call .stop())."""
    return Heartbeat(verb, HEARTBEAT_S if interval is None else interval)
