"""How a rollout runs: canary and batch sizes, the failure threshold, the health gate's settings,
parallelism and retry limits (RolloutOptions; stored with the rollout so a resume keeps them)."""

from __future__ import annotations

from dataclasses import dataclass

from kit.errors import EdgeKitError

LATENCY_STATS = ("min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")


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
    agent_timeout_s: float = 300.0          # the overall deadline of one agent verb (push, activate, gate)
    heartbeat_timeout_s: float = 20.0        # an agent silent this long mid-verb = a dead device (HeartbeatLost)

    def __post_init__(self):
        for name in ("canary", "batch_size", "max_parallel", "max_connects_per_sshd"):
            if int(getattr(self, name)) < 1:
                raise EdgeKitError(f"rollout option {name}={getattr(self, name)}: must be at least 1")
        if self.max_failures < 0 or self.retries < 0:
            raise EdgeKitError("rollout options max_failures and retries must be 0 or more")
        if self.heartbeat_timeout_s < 0:
            raise EdgeKitError("rollout option heartbeat_timeout_s must be 0 (off) or more")
        if self.latency_stat not in LATENCY_STATS:
            raise EdgeKitError(f"rollout option latency_stat={self.latency_stat!r}: use p50_ms, p90_ms, p99_ms, mean_ms, min_ms or max_ms")

    def group(self, entries: list, *, connect=None, on_retry=None):
        """A kit.fleet.Group of `entries` with these limits and this retry policy."""
        from kit.fleet.group import Group
        from kit.fleet.session import Retry

        if connect is None:
            connect = lambda entry: connect_entry(entry, self.heartbeat_timeout_s)  # noqa: E731
        return Group(entries, connect=connect, max_parallel=self.max_parallel,
                     max_connects_per_sshd=self.max_connects_per_sshd,
                     retry=Retry(self.retries, self.backoff_s, self.backoff_max_s), on_retry=on_retry)


def connect_entry(entry, heartbeat_timeout_s: float):
    """Open one device of a fleet operation: SSH devices with this heartbeat timeout."""
    from kit.devices.entry import LOCAL
    from kit.devices.inventory import connect

    if entry.name == LOCAL:
        return connect(entry)
    from kit.devices.ssh.connection import Deadlines  # late: paramiko only for SSH devices

    return connect(entry, deadlines=Deadlines(heartbeat_timeout_s=heartbeat_timeout_s))
