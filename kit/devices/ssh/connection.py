"""The SSH link to one device: strict host keys, a deadline on everything, commands and the agent.

- Host keys are checked strictly (kit.devices.ssh.target.known_hosts_files). An unknown or changed
  key is refused (HostKeyRejected) with its fingerprint and the command that trusts it.
- ~/.ssh/config, the entry's key, ssh-agent and ~/.ssh/id_* are honoured, as OpenSSH would.
- Deadlines: paramiko blocks forever on a frozen peer (its keepalive never waits for a reply;
  paramiko #515/#1380/#2308), so every connect, command and transfer runs under a watchdog that
  closes the transport hard on expiry.
- Every failure of the link leaves as kit.errors.LinkLost (DeviceUnreachable when no connection
  could be made at all): callers retry by type, never by message.
- Liveness: every agent call is watched for the agent's heartbeat (device_agents.liveness, a line
  on stderr every few seconds). A silence longer than Deadlines.heartbeat_timeout_s closes the
  connection and raises kit.errors.HeartbeatLost naming the device and the step: a frozen device
  is found in seconds, not at the verb's overall deadline. Heartbeat lines never reach on_stderr.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from kit.devices.base import parse_envelope
from kit.devices.enrol import fingerprint, known_hosts_name
from kit.devices.entry import DeviceEntry
from device_agents.protocol import is_heartbeat, strip_heartbeats
from kit.devices.ssh.target import SshTarget, known_hosts_files, resolve_target
from kit.errors import AgentProtocolError, DeviceError, DeviceUnreachable, HeartbeatLost, HostKeyRejected, LinkLost

STARTUP_GRACE = 3  # the first heartbeat may take this many heartbeat timeouts (agent start-up)

# What a dead or stalled link raises inside paramiko (socket.timeout is an OSError; SFTPError is a
# garbled SFTP stream). Which of these is really the link, not a refusal, is decided where caught.
LINK_ERRORS = (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError)


@dataclass
class Deadlines:
    """Seconds. A transfer's deadline is transfer_s + bytes / min_rate_bps."""

    connect_s: float = 15.0
    command_s: float = 60.0      # housekeeping commands (sha256sum, df)
    io_idle_s: float = 15.0      # longest silence tolerated inside one SFTP read/write
    transfer_s: float = 60.0
    min_rate_bps: float = 256 * 1024
    heartbeat_timeout_s: float = 20.0  # longest silence of a running agent (it beats every ~2 s); 0: off

    def transfer(self, nbytes: int) -> float:
        return self.transfer_s + nbytes / self.min_rate_bps


class _DeadlineExpired(Exception):
    pass


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"unknown host key for {hostname}")
        self.hostname, self.key = hostname, key


class _StrictPolicy(paramiko.MissingHostKeyPolicy):
    """RejectPolicy that keeps the offered key, so the error can show its fingerprint."""

    def missing_host_key(self, client, hostname, key):
        raise _UnknownHostKey(hostname, key)


class SshConnection:
    """The link half of SshDevice (kit.devices.ssh.files adds the file transfers and the agent set-up)."""

    def __init__(self, entry: DeviceEntry, *, deadlines: Deadlines | None = None, allow_agent: bool = True,
                 trust_unknown_host: bool = False, ssh_config: str | Path | None = None,
                 trusted_keys: list[Path] | None = None, connect: bool = True):
        self.entry = entry
        self.name = entry.name
        self.emulated = entry.emulated
        self.deadlines = deadlines or Deadlines()
        self.allow_agent = allow_agent
        # AutoAddPolicy only when the caller explicitly asks (never a default): see `devices trust`.
        self.trust_unknown_host = trust_unknown_host
        self.ssh_config = ssh_config
        self.trusted_keys = trusted_keys
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        self._agent_dir: str | None = None
        if connect:
            self.connect()

    def target(self) -> SshTarget:
        """(hostname, port, user, key files, ssh config) after ~/.ssh/config is applied."""
        return resolve_target(self.entry, self.ssh_config)

    # --- connection ----------------------------------------------------------------------
    def connect(self) -> "SshConnection":
        host, port, user, keys, cfg = self.target()
        client = paramiko.SSHClient()
        for f in known_hosts_files(self.entry, cfg):
            if f.is_file():
                client.load_system_host_keys(str(f))  # read-only: paramiko never writes "system" keys back
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if self.trust_unknown_host else _StrictPolicy())
        t = self.deadlines.connect_s
        where, kh_name = f"{user}@{host}:{port}", known_hosts_name(host, port)
        self._client = client
        try:
            with self._deadline(t + 2, f"connecting to {where}", error=DeviceUnreachable):
                sock = paramiko.ProxyCommand(cfg["proxycommand"]) if cfg.get("proxycommand") else None
                client.connect(host, port=port, username=user, key_filename=keys or None, timeout=t, banner_timeout=t,
                               auth_timeout=t, channel_timeout=t, allow_agent=self.allow_agent,
                               look_for_keys=not keys, sock=sock)
        except _UnknownHostKey as e:
            self._hard_close()
            raise HostKeyRejected(self.name,
                f"host key of {kh_name} is not known ({fingerprint(e.key)}); check it on the device "
                f"(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and run 'edgekit devices trust {self.name}'") from None
        except paramiko.BadHostKeyException as e:
            self._hard_close()
            raise HostKeyRejected(self.name,
                f"host key of {kh_name} CHANGED: it offers {fingerprint(e.key)}, known_hosts has "
                f"{fingerprint(e.expected_key)}; this may be an attack. If the device was reinstalled, remove the old "
                f"key (ssh-keygen -R '{kh_name}') and run 'edgekit devices trust {self.name}'") from None
        except paramiko.AuthenticationException as e:
            self._hard_close()
            which = ", ".join(keys) if keys else "ssh-agent and ~/.ssh/id_*"
            raise DeviceError(self.name, f"{where} refused our key ({which}): {e}; add the public key to "
                                         f"~{user}/.ssh/authorized_keys on the device (ssh-copy-id) or fix 'key' in "
                                         f"the inventory") from None
        except LINK_ERRORS as e:
            self._hard_close()
            raise DeviceUnreachable(self.name, f"cannot connect to {where} ({type(e).__name__}: {e}); "
                                               f"check that the device is on and sshd listens there") from None
        except BaseException:
            self._hard_close()
            raise
        client.get_transport().set_keepalive(5)
        return self

    def _transport(self) -> paramiko.Transport:
        """The live transport, reconnecting when the last one died."""
        if self._client is None or self._client.get_transport() is None or not self._client.get_transport().is_active():
            self._hard_close()
            self.connect()
        return self._client.get_transport()

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _hard_close(self) -> None:
        """Drop the connection without waiting for the peer (it may be frozen)."""
        client, sftp = self._client, self._sftp
        self._client = self._sftp = None
        self._agent_dir = None
        # The client (transport) first: closing it marks paramiko's packetizer closed, which is what
        # unblocks a writer stuck on a dead link's full send buffer; an SFTP/channel close first
        # would itself block on that writer's lock (seen with the veth cut mid-push).
        for closer in (client, sftp):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()

    def _link_lost(self, what: str, e: BaseException, then: str = "try again when the device is back") -> LinkLost:
        """Close hard and describe a link that failed while doing `what` (the caller raises it)."""
        self._hard_close()
        return LinkLost(self.name, f"the connection dropped while {what} ({type(e).__name__}: {e}); {then}")

    def close(self) -> None:
        self._hard_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _deadline(self, seconds: float, what: str, error: type[LinkLost] = LinkLost):
        """Run the block under a watchdog: on expiry the transport is closed hard and `error` raised.
        A stall inside (socket timeout) is reported the same way; other errors pass through."""
        expired = threading.Event()
        client = self._client

        def fire():
            expired.set()
            for closer in (client, self._sftp):  # transport first: see _hard_close
                with contextlib.suppress(Exception):
                    closer.close()

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except (socket.timeout, TimeoutError, _DeadlineExpired) as e:
            self._hard_close()
            raise error(self.name, f"{what} stalled (no answer within its deadline); the connection was "
                                   f"closed. Is the device frozen or the link down?") from e
        except Exception as e:
            if expired.is_set():
                self._hard_close()
                raise error(self.name, f"{what} did not finish within {seconds:g} s; the connection was "
                                       f"closed. Is the device frozen or the link down?") from e
            raise
        finally:
            timer.cancel()
        if expired.is_set():
            self._hard_close()
            raise error(self.name, f"{what} did not finish within {seconds:g} s; the connection was closed")

    # --- remote commands -----------------------------------------------------------------
    def exec(self, command: str, timeout: float, *, stdin: bytes | None = None, on_stderr=None,
             step: str | None = None) -> tuple[int, bytes, bytes]:
        """Run one command line (built with shlex.quote by the caller) under a deadline:
        (exit code, -1 if none came; stdout; stderr). Link failures raise LinkLost. With `step`
        (an agent call) the agent's heartbeat is watched: HeartbeatLost names that step."""
        transport = self._transport()
        label = f"command {command.split()[0]!r}"
        with self._deadline(timeout + self.deadlines.connect_s, label):
            try:
                chan = transport.open_session(timeout=self.deadlines.connect_s)
                try:
                    return self._run(chan, command, time.monotonic() + timeout, stdin, on_stderr, step)
                finally:
                    chan.close()
            except (socket.timeout, TimeoutError):
                raise  # a stall: the watchdog's message
            except LINK_ERRORS as e:
                raise self._link_lost(f"running {label}", e) from None

    def _run(self, chan: paramiko.Channel, command: str, end: float, stdin: bytes | None, on_stderr,
             step: str | None = None):
        out, err = bytearray(), bytearray()
        chan.settimeout(self.deadlines.io_idle_s)
        chan.exec_command(command)
        hb_timeout = self.deadlines.heartbeat_timeout_s if step else 0
        heard = [time.monotonic(), b""]  # when the agent last spoke; a partial stderr line

        def pump() -> bool:
            """Take what has arrived (stdout, stderr); True if anything did."""
            got = False
            if chan.recv_ready():
                out.extend(chan.recv(1 << 16))
                got = True
            if chan.recv_stderr_ready():
                chunk = chan.recv_stderr(1 << 16)
                err.extend(chunk)
                got = True
                *lines, heard[1] = (heard[1] + chunk).split(b"\n")
                for line in lines:
                    if on_stderr is not None and not is_heartbeat(line):
                        on_stderr(line.decode(errors="replace"))
            if got:
                heard[0] = time.monotonic()
            return got

        def check_alive() -> None:
            if time.monotonic() > end:
                raise _DeadlineExpired()
            silent = time.monotonic() - heard[0]
            # Until the agent's first word, allow for its start (python + imports), which a loaded
            # device can stretch well past one heartbeat interval; after it, the plain timeout.
            limit = hb_timeout if (out or err) else hb_timeout * STARTUP_GRACE
            if hb_timeout and silent > limit and not chan.exit_status_ready():
                self._hard_close()
                raise HeartbeatLost(self.name, step, silent, hb_timeout)

        if stdin is not None:
            view, sent = memoryview(stdin), 0
            try:
                # Never block in a send: a frozen device stops opening the window, and its silence
                # must still be noticed (the heartbeat), so read while writing.
                while sent < len(view):
                    if chan.exit_status_ready():
                        break  # the device answered (a refusal) without reading everything
                    pump()
                    if chan.send_ready():
                        sent += chan.send(view[sent:sent + (1 << 16)])
                    else:
                        if chan.closed or not chan.get_transport().is_active():
                            raise OSError("the channel closed while sending")
                        chan.status_event.wait(0.01)
                    check_alive()
                chan.shutdown_write()
            except OSError:
                if not chan.exit_status_ready() and not chan.closed:
                    raise
        while True:
            if pump():
                continue
            # sshd may send exit-status before the last of the output: the command is done
            # only once EOF has arrived too (else trailing stdout is silently lost).
            if (chan.exit_status_ready() and chan.eof_received) or chan.closed:
                if not (chan.recv_ready() or chan.recv_stderr_ready()):
                    break
                continue
            check_alive()
            if not chan.get_transport().is_active():
                raise LinkLost(self.name, f"the connection dropped while running {command.split()[0]!r}")
            if chan.exit_status_ready():
                time.sleep(0.005)  # exit status in, EOF still on its way: do not spin
            else:
                chan.status_event.wait(0.02)
        if not chan.exit_status_ready() and not chan.get_transport().is_active():
            raise LinkLost(self.name, f"the connection dropped while running {command.split()[0]!r}")
        code = chan.recv_exit_status() if chan.exit_status_ready() else -1
        return code, bytes(out), strip_heartbeats(bytes(err)) if step else bytes(err)

    # --- the agent -------------------------------------------------------------------------
    def _agent_command(self, args: list[str]) -> str:
        """The command line that runs the agent with `args` (kit.devices.ssh.files knows where it lives)."""
        raise NotImplementedError

    def _agent_reply(self, args: list[str], timeout: float, *, stdin: bytes | None = None, on_stderr=None,
                     step: str | None = None) -> dict:
        """One agent call: its envelope (ok or not). No exit status and no envelope = the link broke.
        `step` names the call in a HeartbeatLost (default: the agent's verb)."""
        args = [str(a) for a in args]
        code, out, err = self.exec(self._agent_command(args), timeout, stdin=stdin, on_stderr=on_stderr,
                                   step=step or f"the agent's {args[0]}")
        if code == 127 and not out.strip():
            raise DeviceError(self.name, f"{self.entry.python!r} was not found on the device "
                                         f"({err.decode(errors='replace').strip()[-300:]}); install python3 there "
                                         f"or set 'python' in the inventory")
        try:
            return parse_envelope(self.name, out, exit_code=code, stderr=err)
        except AgentProtocolError:
            if code != -1:
                raise
            # No exit status: the channel closed under the agent. The link, not the agent.
            raise LinkLost(self.name, f"the connection closed before the agent answered (exit -1): "
                                      f"{err.decode(errors='replace').strip()[-300:]}") from None

    def run_agent(self, args: list[str], timeout: float = 900, on_stderr=None) -> dict:
        """Run `python3 -m device_agents <args>` on the device; its envelope (kit.devices.base)."""
        return self._agent_reply(args, timeout, on_stderr=on_stderr)
