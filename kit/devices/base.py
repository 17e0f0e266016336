"""What every device offers (the built-in `local` device, SSH devices, emulated ones alike), and the
one place the host turns an agent's envelope into a result or a typed error."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol, runtime_checkable

from kit.errors import AgentProtocolError, AgentRefused
from kit.progress import ProgressFn


@runtime_checkable
class Device(Protocol):
    name: str
    emulated: bool

    def run_agent(self, args: list[str], timeout: float = 900,
                  on_stderr: Optional[Callable[[str], None]] = None) -> dict:
        """Run `python3 -m device_agents <args>` on the device; the parsed envelope (ok or not).
        on_stderr gets the agent's stderr line by line (decoded, without the newline).
        Raises LinkLost (retryable) when the link fails, AgentProtocolError on a broken answer."""

    def stage_bundle(self, bundle_path: Path, progress: ProgressFn = None) -> str:
        """Make the bundle available on the device (pushed, verified, atomic); its path there."""

    def close(self) -> None: ...

    def __enter__(self): ...

    def __exit__(self, *exc): ...


def parse_envelope(device: str, stdout: bytes | str, *, exit_code: int | None = None,
                   stderr: bytes | str = b"") -> dict:
    """device_agents.protocol.parse_reply with the device named in the error (and, when given, the
    agent's exit code and the tail of its stderr: what a user needs to see why it said nothing)."""
    from device_agents.protocol import ProtocolError, parse_reply, strip_heartbeats

    try:
        return parse_reply(stdout)
    except ProtocolError as e:
        stderr = strip_heartbeats(stderr)  # the agent's liveness lines say nothing about why it failed
        tail = (stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr).strip()[-300:]
        detail = f" (exit {exit_code})" if exit_code is not None else ""
        raise AgentProtocolError(device, f"{e}{detail}" + (f": {tail}" if tail else "")) from None


def result_of(device: str, verb: str, doc: dict) -> dict:
    """The envelope's result; AgentRefused(code) when the agent said ok=false."""
    if not doc.get("ok"):
        err = doc.get("error") or {}
        raise AgentRefused(device, verb, str(err.get("code", "unknown")), str(err.get("message", "")))
    return doc.get("result") or {}
