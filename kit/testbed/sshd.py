"""Real OpenSSH sshd "devices" on 127.0.0.1 (needs /usr/sbin/sshd: apt openssh-server).

API (tests through tests/fixtures_sshd.py, benchmarks directly):

    SshdFactory(root, on_missing=None)   starts sshd servers under `root`, stops them all by PID on close()
        factory(n=1, forced_command=None, home=None, python=None) -> list[DeviceEntry]
        (= factory.start) Starts n sshd servers on free 127.0.0.1 ports, each with its own generated
        ed25519 host key, user key, authorized_keys and known_hosts, and returns one DeviceEntry per
        server (name "dev0", "dev1", ...; entry.known_hosts set, so host keys are checked strictly;
        entry.python = this venv's python so the runtimes import; entry.home = a fresh folder unless
        `home` is given). Without sshd it calls on_missing(reason) (the pytest fixtures pass
        pytest.skip), else raises SshdMissing.
        forced_command=True pins the returned entries' key to the forced-command agent
        (device_agents/forced.py) with kit.devices.enrol.authorized_keys_line(); a string is used as the
        command itself. The unrestricted enrolment key stays available as
        server.entry(forced=False): push the agent with it once (SshDevice.ensure_agent()); the
        forced entry then benches and receives bundles, but has no SFTP and no shell.
    factory.servers[name] / factory.server(entry) -> SshdServer, for fault injection:
        .port .dir .home .known_hosts .client_key .host_key .pid
        .session_pids()  every process under the listening sshd (per-connection sessions)
        .freeze() / .thaw()  SIGSTOP / SIGCONT those session processes (a frozen device)
        .kill()          SIGKILL the listener and its sessions (a device that lost power)
        .start() / .stop() / .restart()  same port, same keys
        .entry(**overrides) -> a DeviceEntry for this server (forced=, key=, known_hosts= ...)
        .add_key(public_key_line, forced_command=None)  append to its authorized_keys

    with SshdFactory(tmpdir) as f: entries = f.start(2)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from kit.devices import DeviceEntry
from kit.errors import EdgeKitError
from kit.testbed.ports import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSHD_MISSING = "needs OpenSSH sshd (apt-get install openssh-server): not installed on this machine"

__all__ = ["SSHD", "SshdMissing", "have_sshd", "free_port", "keygen", "descendants", "SshdServer", "SshdFactory"]


class SshdMissing(EdgeKitError):
    """sshd or ssh-keygen is not installed here."""


def have_sshd() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh-keygen") is not None


def keygen(path: Path, comment: str = "edgekit-test") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _signal(pids, sig) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


class SshdServer:
    """One sshd with its own keys. Subclasses change where it listens (`addr`) and how it is launched."""

    addr = "127.0.0.1"

    def __init__(self, root: Path, name: str, *, forced_command=None, home: str | None = None, python: str | None = None):
        self.name = name
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = keygen(self.dir / "host_ed25519", f"{name}-host")
        self.client_key = keygen(self.dir / "client_ed25519", f"{name}-enrol")
        self.home = Path(home) if home else self.dir / "home" / ".edgekit"
        self.python = python or sys.executable
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(self._pub(self.client_key) + "\n")
        self.forced_key: Path | None = None
        if forced_command:
            self.forced_key = keygen(self.dir / "forced_ed25519", f"{name}-forced")
            if isinstance(forced_command, str):
                self.add_key(self._pub(self.forced_key), forced_command=forced_command)
            else:  # the line the kit documents for the hardened set-up, used as is
                from kit.devices.enrol import authorized_keys_line

                with open(self.authorized_keys, "a") as f:
                    f.write(authorized_keys_line(self._pub(self.forced_key), python=self.python, home=str(self.home)) + "\n")
        self.known_hosts = self.dir / "known_hosts"
        self.set_known_host(self.addr, self.port)
        self.config = self.dir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", f"ListenAddress {self.addr}", f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "StrictModes no",
            "Subsystem sftp internal-sftp", "MaxStartups 100:30:200", "MaxSessions 50", "LogLevel ERROR", ""]))
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _pub(key: Path) -> str:
        return " ".join(Path(str(key) + ".pub").read_text().split()[:2])

    def set_known_host(self, host: str, port: int) -> None:
        """Write known_hosts naming this server's host key for [host]:port (e.g. behind a proxy)."""
        self.known_hosts.write_text(f"[{host}]:{port} {self._pub(self.host_key)}\n")

    def add_key(self, public_key_line: str, forced_command: str | None = None) -> None:
        prefix = f'restrict,command="{forced_command}" ' if forced_command else ""
        with open(self.authorized_keys, "a") as f:
            f.write(prefix + public_key_line.strip() + "\n")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def _argv(self) -> list[str]:
        """The command that becomes the listening sshd (its PID is the listener's)."""
        return [SSHD, "-D", "-e", "-f", str(self.config)]

    def start(self, timeout: float = 10.0) -> "SshdServer":
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir (root)
        subprocess.run([SSHD, "-t", "-f", str(self.config)], check=True, capture_output=True)
        self.log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen(self._argv(), stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd {self.name} exited ({self.proc.returncode}): "
                                   f"{(self.dir / 'sshd.log').read_text()[-500:]}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((self.addr, self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd {self.name} did not listen on {self.addr}:{self.port} within {timeout} s")

    def session_pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.pid else []

    def freeze(self) -> list[int]:
        pids = self.session_pids()
        _signal(pids, signal.SIGSTOP)
        return pids

    def thaw(self) -> None:
        _signal(self.session_pids(), signal.SIGCONT)

    def kill(self) -> None:
        """Power cut: the listener and every session die at once."""
        if self.proc is None:
            return
        pids = self.session_pids()
        _signal([self.proc.pid, *pids], signal.SIGKILL)
        _signal(pids, signal.SIGCONT)
        self.proc.wait(timeout=10)
        self.proc = None
        self.log.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = self.session_pids()
        _signal(pids, signal.SIGCONT)  # a stopped process ignores SIGTERM until continued
        _signal([self.proc.pid, *pids], signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        finally:
            self.proc = None
            self.log.close()

    def restart(self) -> "SshdServer":
        self.stop()
        return self.start()

    def entry(self, *, forced: bool | None = None, **overrides) -> DeviceEntry:
        import getpass

        forced = self.forced_key is not None if forced is None else forced
        fields = dict(name=self.name, host=self.addr, port=self.port, user=getpass.getuser(),
                      key=str(self.forced_key if forced else self.client_key), python=self.python, home=str(self.home),
                      known_hosts=str(self.known_hosts), forced_command=forced, kind="linux-sshd")
        fields.update(overrides)
        return DeviceEntry(**fields)


class SshdFactory:
    """Starts sshd servers under `root` and stops every one of them (by PID) on close().

    on_missing(reason) is called when this machine has no sshd (pytest fixtures pass pytest.skip);
    without it, start() raises SshdMissing.
    """

    def __init__(self, root: Path, on_missing: Callable[[str], object] | None = None):
        self.root = Path(root)
        self.on_missing = on_missing
        self.servers: dict[str, SshdServer] = {}

    def start(self, n: int = 1, forced_command=None, home: str | None = None, python: str | None = None) -> list[DeviceEntry]:
        if not have_sshd():
            if self.on_missing is not None:
                self.on_missing(SSHD_MISSING)
            raise SshdMissing(SSHD_MISSING)
        entries = []
        for _ in range(n):
            name = f"dev{len(self.servers)}"
            server = SshdServer(self.root / name, name, forced_command=forced_command, home=home, python=python)
            self.servers[name] = server
            server.start()
            entries.append(server.entry())
        return entries

    __call__ = start

    def server(self, entry_or_name) -> SshdServer:
        return self.servers[getattr(entry_or_name, "name", entry_or_name)]

    def close(self) -> None:
        errors = []
        for s in self.servers.values():
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
