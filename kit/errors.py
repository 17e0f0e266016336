"""Errors a user sees: one line naming the thing and what to do. Typed, so callers decide by type
(retry a dropped link, never retry a refused bundle), never by matching message text."""


class EdgeKitError(Exception):
    """An error the user can act on. The CLI prints str(err) on one line and exits non-zero."""

    exit_code = 2
    retryable = False  # may the same call succeed if simply tried again (a rollout retries these)?

    def __init__(self, message: str):
        # One line, always: multi-line messages get folded so the CLI contract holds.
        super().__init__(" ".join(str(message).split()))


class DeviceError(EdgeKitError):
    """Something about one device; `device` names it."""

    def __init__(self, device: str, message: str):
        self.device = device
        super().__init__(f"device {device}: {message}")


class LinkLost(DeviceError):
    """The connection could not be made, dropped, or stalled past a deadline: retryable."""

    retryable = True


class DeviceUnreachable(LinkLost):
    """Could not connect at all (refused, no route, timed out before the banner)."""


class HostKeyRejected(DeviceError):
    """Unknown or changed SSH host key: never retried; the message names `edgekit devices trust`."""


class AgentRefused(DeviceError):
    """The agent answered with ok=false: `code` is its stable error code (bad_signature, replayed,
    disk_full, ...). Not retryable: the same bundle would be refused again."""

    def __init__(self, device: str, verb: str, code: str, message: str):
        self.verb, self.code, self.agent_message = verb, code, message
        super().__init__(device, f"{verb} failed [{code}]: {message}")


class AgentProtocolError(DeviceError):
    """The agent's output is not a valid envelope (nothing printed, not JSON, wrong schema version)."""


class HeartbeatLost(LinkLost):
    """The agent's heartbeat stopped mid-verb (no line on its channel for the heartbeat timeout):
    the device is frozen, hung or cut off while the TCP link looked alive. `step` names what ran.

    Not retryable, unlike its parent: a retry would start the same long verb again on a device
    that just stopped answering, and hold the batch for another timeout each time; the device is
    marked failed and the rollout's --max-failures decides what follows (resume retries it)."""

    retryable = False

    def __init__(self, device: str, step: str, silent_s: float, timeout_s: float):
        self.step, self.silent_s, self.timeout_s = step, silent_s, timeout_s
        super().__init__(device, f"no heartbeat from the agent for {silent_s:.0f} s (heartbeat_timeout_s="
                                 f"{timeout_s:g}) during {step}; the device is frozen or cut off, its "
                                 f"connection was closed and it is marked failed")
