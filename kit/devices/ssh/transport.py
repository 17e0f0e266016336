"""SSH devices: the device agent over paramiko, with strict host keys and a deadline on everything.

SshDevice has the same duck type as LocalDevice (name, emulated, run_agent, stage_bundle, close).

- Host keys are checked strictly: ~/.ssh/known_hosts, UserKnownHostsFile from ~/.ssh/config and
  config_dir()/known_hosts (what `edgekit devices trust` records), or the entry's own known_hosts.
  An unknown or changed key is refused with its fingerprint and the command that trusts it.
- ~/.ssh/config (HostName, Port, User, IdentityFile, ProxyCommand), the entry's key, ssh-agent and
  ~/.ssh/id_* are honoured, as OpenSSH would.
- Deadlines: paramiko blocks forever on a frozen peer (its keepalive never waits for a reply;
  paramiko #515/#1380/#2308), so every connect, command and transfer runs under a watchdog that
  closes the transport hard on expiry, and every SFTP read/write has a channel timeout.
- Pushes go to <home>/bundles/.incoming/<id>.<token>.part/, are checked with sha256sum on the
  device, then renamed into <home>/bundles/<id>/ in one posix_rename. A push cut half-way leaves
  only a .part folder the agent never looks at; the next push removes it and starts over. A bundle
  already on the device with the same content digest is not sent again. Free space is checked
  before sending.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import posixpath
import re
import secrets
import shlex
import socket
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.sftp import CMD_EXTENDED

import device_agents
from device_agents.bundle import sha256_file
from kit.config import config_dir
from kit.errors import EdgeKitError
from kit.devices.inventory import DeviceEntry
from kit.progress import ProgressFn, report

DIGEST_FILE = ".edgekit-digest"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class Deadlines:
    """Seconds. A transfer's deadline is transfer_s + bytes / min_rate_bps."""

    connect_s: float = 15.0
    command_s: float = 60.0      # housekeeping commands (sha256sum, df)
    io_idle_s: float = 15.0      # longest silence tolerated inside one SFTP read/write
    transfer_s: float = 60.0
    min_rate_bps: float = 256 * 1024

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


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def local_tree(root: Path, *, only_suffix: tuple[str, ...] | None = None) -> list[tuple[str, Path]]:
    """(relative posix name, path) of every regular file under root, sorted; symlinks refused."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in path.parts or path.name.endswith((".part", ".pyc")):
            continue
        if path.is_symlink():
            raise EdgeKitError(f"{path}: symlinks are not pushed; replace it with the file itself")
        if path.is_file() and (only_suffix is None or path.suffix in only_suffix):
            out.append((rel, path))
    return out


def tree_digest(files: list[tuple[str, Path]]) -> tuple[str, dict[str, str]]:
    """Content address of a folder: sha256 over (name, sha256, size) of every file, by name.

    device_agents/forced.py computes the same digest for bundles received behind a forced command.
    """
    shas = {rel: sha256_file(p) for rel, p in files}
    h = hashlib.sha256()
    for rel, p in sorted(files):
        h.update(f"{rel}\0{shas[rel]}\0{p.stat().st_size}\n".encode())
    return h.hexdigest(), shas


def default_trusted_keys() -> list[Path]:
    """Public keys the device agent should trust: the kit's signing key(s), if any exist yet."""
    try:  # the signing module names its key path; fall back to the agreed location
        from kit.package import signing  # type: ignore[attr-defined]

        fn = getattr(signing, "public_key_paths", None) or getattr(signing, "public_key_path", None)
        if fn is not None:
            found = fn()
            found = [found] if isinstance(found, (str, Path)) else list(found)
            return [Path(p) for p in found if Path(p).is_file()]
    except ImportError:
        pass
    return sorted((config_dir() / "keys").glob("*.pub"))


def authorized_keys_line(public_key: str, *, python: str, home: str, agent_version: str = device_agents.AGENT_VERSION) -> str:
    """The hardened authorized_keys line that pins `public_key` to the forced-command agent.

    `home` must be the absolute agent home on the device. sshd runs the command with the user's
    shell, but the command is fixed here (not from the network); what the client asks for arrives
    only in SSH_ORIGINAL_COMMAND, which device_agents/forced.py validates without a shell.
    """
    agent_dir = posixpath.join(home, "agent", agent_version)
    cmd = (f"env EDGEKIT_HOME={shlex.quote(home)} PYTHONPATH={shlex.quote(agent_dir)} "
           f"{shlex.quote(python)} -m device_agents.forced")
    if '"' in cmd:
        raise EdgeKitError(f"forced command {cmd!r}: paths must not contain double quotes")
    return f'restrict,command="{cmd}" {" ".join(public_key.split()[:2])}'


class SshDevice:
    """One device over SSH. Connects on creation; use as a context manager (or call close())."""

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
        self.ssh_config_path = Path(ssh_config) if ssh_config else Path.home() / ".ssh" / "config"
        self.trusted_keys = trusted_keys
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        self._agent_dir: str | None = None
        if connect:
            self.connect()

    # --- connection ----------------------------------------------------------------------
    def _ssh_config(self) -> dict:
        if not self.ssh_config_path.is_file():
            return {}
        try:
            return dict(paramiko.SSHConfig.from_path(str(self.ssh_config_path)).lookup(self.entry.host))
        except Exception as e:  # a broken config file should say which file
            raise EdgeKitError(f"{self.ssh_config_path}: cannot parse ({e}); fix the file or pass ssh_config=") from e

    def target(self) -> tuple[str, int, str, list[str], dict]:
        """(hostname, port, user, key files, ssh config) after ~/.ssh/config is applied."""
        cfg = self._ssh_config()
        host = cfg.get("hostname", self.entry.host)
        port = self.entry.port if self.entry.port != 22 else int(cfg.get("port", 22))
        user = self.entry.user or cfg.get("user") or getpass.getuser()
        if self.entry.key:
            keys = [os.path.expanduser(self.entry.key)]
            if not os.path.isfile(keys[0]):
                raise EdgeKitError(f"device {self.name}: key file {keys[0]} not found; fix 'key' in the inventory")
        else:
            keys = [os.path.expanduser(k) for k in cfg.get("identityfile", []) if os.path.isfile(os.path.expanduser(k))]
        return host, port, user, keys, cfg

    def _known_hosts_files(self, cfg: dict) -> list[Path]:
        if self.entry.known_hosts:
            return [Path(os.path.expanduser(self.entry.known_hosts))]
        files = [Path.home() / ".ssh" / "known_hosts"]
        for f in (cfg.get("userknownhostsfile") or "").split():
            files.append(Path(os.path.expanduser(f)))
        files.append(config_dir() / "known_hosts")
        return files

    def connect(self) -> "SshDevice":
        host, port, user, keys, cfg = self.target()
        client = paramiko.SSHClient()
        for f in self._known_hosts_files(cfg):
            if f.is_file():
                client.load_system_host_keys(str(f))  # read-only: paramiko never writes "system" keys back
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if self.trust_unknown_host else _StrictPolicy())
        sock = paramiko.ProxyCommand(cfg["proxycommand"]) if cfg.get("proxycommand") else None
        t = self.deadlines.connect_s
        where = f"{user}@{host}:{port}"
        self._client = client
        try:
            with self._deadline(t + 2, f"connecting to {where}"):
                client.connect(host, port=port, username=user, key_filename=keys or None, timeout=t, banner_timeout=t,
                               auth_timeout=t, channel_timeout=t, allow_agent=self.allow_agent,
                               look_for_keys=not keys, sock=sock)
        except _UnknownHostKey as e:
            self._hard_close()
            raise EdgeKitError(
                f"device {self.name}: host key of {known_hosts_name(host, port)} is not known ({fingerprint(e.key)}); "
                f"check it on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and run "
                f"'edgekit devices trust {self.name}'") from None
        except paramiko.BadHostKeyException as e:
            self._hard_close()
            raise EdgeKitError(
                f"device {self.name}: host key of {known_hosts_name(host, port)} CHANGED: it offers {fingerprint(e.key)}, "
                f"known_hosts has {fingerprint(e.expected_key)}; this may be an attack. If the device was reinstalled, "
                f"remove the old key (ssh-keygen -R '{known_hosts_name(host, port)}') and run 'edgekit devices trust {self.name}'"
            ) from None
        except paramiko.AuthenticationException as e:
            self._hard_close()
            which = ", ".join(keys) if keys else "ssh-agent and ~/.ssh/id_*"
            raise EdgeKitError(f"device {self.name}: {where} refused our key ({which}): {e}; add the public key to "
                               f"~{user}/.ssh/authorized_keys on the device (ssh-copy-id) or fix 'key' in the inventory") from None
        except EdgeKitError:
            self._hard_close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._hard_close()
            raise EdgeKitError(f"device {self.name}: cannot connect to {where} ({type(e).__name__}: {e}); "
                               f"check that the device is on and sshd listens there") from None
        client.get_transport().set_keepalive(5)
        return self

    def _transport(self) -> paramiko.Transport:
        if self._client is None or self._client.get_transport() is None or not self._client.get_transport().is_active():
            self._hard_close()
            self.connect()
        return self._client.get_transport()

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

    def close(self) -> None:
        self._hard_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _deadline(self, seconds: float, what: str):
        """Run the block under a watchdog: on expiry the transport is closed hard and we raise."""
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
            raise EdgeKitError(f"device {self.name}: {what} stalled (no answer within its deadline); the connection was "
                               f"closed. Is the device frozen or the link down?") from e
        except Exception as e:
            if expired.is_set():
                self._hard_close()
                raise EdgeKitError(f"device {self.name}: {what} did not finish within {seconds:g} s; the connection was "
                                   f"closed. Is the device frozen or the link down?") from e
            raise
        finally:
            timer.cancel()
        if expired.is_set():
            self._hard_close()
            raise EdgeKitError(f"device {self.name}: {what} did not finish within {seconds:g} s; the connection was closed")

    # --- remote commands -----------------------------------------------------------------
    def exec(self, command: str, timeout: float, *, stdin: bytes | None = None, on_stderr=None) -> tuple[int, bytes, bytes]:
        """Run one command line (built with shlex.quote by the caller) under a deadline."""
        transport = self._transport()
        end = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        with self._deadline(timeout + self.deadlines.connect_s, f"command {command.split()[0]!r}"):
            chan = transport.open_session(timeout=self.deadlines.connect_s)
            try:
                chan.settimeout(self.deadlines.io_idle_s)
                chan.exec_command(command)
                if stdin is not None:
                    view = memoryview(stdin)
                    try:
                        for i in range(0, len(view), 1 << 16):
                            if chan.exit_status_ready():
                                break  # the device answered (a refusal) without reading everything
                            chan.sendall(view[i:i + (1 << 16)])
                            if time.monotonic() > end:
                                raise _DeadlineExpired()
                        chan.shutdown_write()
                    except OSError:
                        if not chan.exit_status_ready() and not chan.closed:
                            raise
                pending = b""
                while True:
                    got = False
                    if chan.recv_ready():
                        out.extend(chan.recv(1 << 16))
                        got = True
                    if chan.recv_stderr_ready():
                        chunk = chan.recv_stderr(1 << 16)
                        err.extend(chunk)
                        got = True
                        if on_stderr is not None:
                            pending += chunk
                            *lines, pending = pending.split(b"\n")
                            for line in lines:
                                on_stderr(line.decode(errors="replace"))
                    if got:
                        continue
                    # sshd may send exit-status before the last of the output: the command is done
                    # only once EOF has arrived too (else trailing stdout is silently lost).
                    if (chan.exit_status_ready() and chan.eof_received) or chan.closed:
                        if not (chan.recv_ready() or chan.recv_stderr_ready()):
                            break
                        continue
                    if time.monotonic() > end:
                        raise _DeadlineExpired()
                    if not transport.is_active():
                        raise EdgeKitError(f"device {self.name}: the connection dropped while running {command.split()[0]!r}")
                    if chan.exit_status_ready():
                        time.sleep(0.005)  # exit status in, EOF still on its way: do not spin
                    else:
                        chan.status_event.wait(0.02)
                code = chan.recv_exit_status() if chan.exit_status_ready() else -1
            finally:
                chan.close()
        return code, bytes(out), bytes(err)

    def _agent_command(self, args: list[str]) -> str:
        if self.entry.forced_command:
            return shlex.join(args)  # forced.py on the device re-parses this, no shell involved
        agent_dir = self.ensure_agent()
        return (f"env EDGEKIT_HOME={shlex.quote(self.home)} PYTHONPATH={shlex.quote(agent_dir)} "
                f"{shlex.quote(self.entry.python)} -m device_agents {shlex.join(args)}")

    def run_agent(self, args: list[str], timeout: float = 900, on_stderr=None) -> dict:
        """Run `python3 -m device_agents <args>` on the device and return its JSON document."""
        code, out, err = self.exec(self._agent_command([str(a) for a in args]), timeout, on_stderr=on_stderr)
        lines = out.decode(errors="replace").strip().splitlines()
        if not lines:
            tail = err.decode(errors="replace").strip()[-300:]
            if code == 127:
                raise EdgeKitError(f"device {self.name}: {self.entry.python!r} was not found on the device ({tail}); "
                                   f"install python3 there or set 'python' in the inventory")
            raise EdgeKitError(f"device {self.name}: the agent printed nothing (exit {code}): {tail}")
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError as e:
            raise EdgeKitError(f"device {self.name}: the agent's output is not JSON: {lines[-1][:200]}") from e

    # --- files -----------------------------------------------------------------------------
    def sftp(self) -> paramiko.SFTPClient:
        if self.entry.forced_command:
            raise EdgeKitError(f"device {self.name}: is behind the forced-command agent, which allows no SFTP; "
                               f"bundles go through stage_bundle (its receive verb), the agent code with the enrolment key")
        if self._sftp is None:
            transport = self._transport()
            with self._deadline(self.deadlines.connect_s, "opening SFTP"):
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            # Without this a frozen peer blocks a read/write forever (checked: 45 s+ with keepalive on).
            self._sftp.get_channel().settimeout(self.deadlines.io_idle_s)
        return self._sftp

    @property
    def home(self) -> str:
        """The agent home on the device, absolute ("~" resolved through SFTP's starting folder)."""
        if self._home is None:
            home = self.entry.home
            if home.startswith("~") or not home.startswith("/"):
                with self._deadline(self.deadlines.command_s, "resolving the home folder"):
                    user_home = self.sftp().normalize(".")
                home = posixpath.join(user_home, home[2:] if home.startswith("~/") else home.lstrip("~"))
            self._home = posixpath.normpath(home)
        return self._home

    def _makedirs(self, path: str) -> None:
        sftp = self.sftp()
        parts = path.strip("/").split("/")
        cur = ""
        for part in parts:
            cur += "/" + part
            try:
                sftp.stat(cur)
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    sftp.mkdir(cur, 0o755)
                sftp.stat(cur)  # raises if it still is not there (permissions)

    def _read_small(self, path: str) -> str | None:
        try:
            with self.sftp().open(path, "r") as f:
                return f.read(4096).decode(errors="replace").strip()
        except (FileNotFoundError, OSError):
            return None

    def _rmtree(self, path: str) -> None:
        sftp = self.sftp()
        try:
            entries = sftp.listdir_attr(path)
        except FileNotFoundError:
            return
        import stat as stat_mod

        for a in entries:
            child = posixpath.join(path, a.filename)
            if stat_mod.S_ISDIR(a.st_mode or 0):
                self._rmtree(child)
            else:
                with contextlib.suppress(FileNotFoundError):
                    sftp.remove(child)
        with contextlib.suppress(FileNotFoundError):
            sftp.rmdir(path)

    def free_bytes(self, path: str) -> int | None:
        """Free bytes for an unprivileged user at `path` (statvfs@openssh.com, else df), None if unknown."""
        sftp = self.sftp()
        try:
            # paramiko has no statvfs; OpenSSH's sftp-server implements this extension since 5.1.
            with self._deadline(self.deadlines.command_s, "checking free space"):
                _, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", path)
            bsize, frsize, blocks, bfree, bavail = (msg.get_int64() for _ in range(5))
            return bavail * (frsize or bsize)
        except (OSError, paramiko.SSHException):
            pass
        code, out, _ = self.exec(f"df -Pk {shlex.quote(path)}", self.deadlines.command_s)
        lines = out.decode(errors="replace").splitlines()
        if code == 0 and len(lines) >= 2 and len(lines[-1].split()) >= 4:
            return int(lines[-1].split()[3]) * 1024
        return None

    def _remote_sha256(self, paths: list[str]) -> dict[str, str]:
        cmd = "sha256sum -- " + " ".join(shlex.quote(p) for p in paths)
        code, out, err = self.exec(cmd, self.deadlines.command_s + 2 * len(paths))
        if code == 127:
            raise EdgeKitError(f"device {self.name}: sha256sum is not installed; install coreutils (or busybox) on the device")
        got = {}
        for line in out.decode(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            got[name.strip()] = digest.strip()
        return got

    def upload_tree(self, files: list[tuple[str, Path]], final_dir: str, label: str, progress: ProgressFn = None,
                    check_space: bool = True) -> bool:
        """Atomically install `files` as the folder `final_dir`; False when an identical copy is there already."""
        digest, shas = tree_digest(files)
        if self._read_small(posixpath.join(final_dir, DIGEST_FILE)) == digest:
            return False
        parent, leaf = posixpath.split(final_dir)
        incoming = posixpath.join(parent, ".incoming")
        self._makedirs(incoming)
        # A push cut short (killed sshd, dropped link) left <leaf>.*.part here: restart cleanly.
        stale = re.compile(rf"^{re.escape(leaf)}\.[0-9a-f]{{8}}\.(part|tar\.part|old)$")
        for name in self.sftp().listdir(incoming):
            if stale.match(name):
                self._rmtree(posixpath.join(incoming, name))
        total = sum(p.stat().st_size for _, p in files)
        if check_space:
            free = self.free_bytes(incoming)
            need = total + max(1 << 20, total // 20)  # room for the rename dance and the digest file
            if free is not None and free < need:
                raise EdgeKitError(f"device {self.name}: {parent} has {free / 1e6:.1f} MB free but {label} needs "
                                   f"{need / 1e6:.1f} MB; free space on the device (or set a roomier 'home') and retry")
        token = secrets.token_hex(4)
        staging = posixpath.join(incoming, f"{leaf}.{token}.part")
        sftp = self.sftp()
        done = 0
        report(progress, label, 0, total)
        try:
            with self._deadline(self.deadlines.transfer(total), f"pushing {label}"):
                self._makedirs(staging)
                for rel, path in files:
                    remote = posixpath.join(staging, rel)
                    if "/" in rel:
                        self._makedirs(posixpath.dirname(remote))
                    size = path.stat().st_size
                    base = done

                    def cb(sent, _size, base=base):
                        report(progress, label, base + sent, total)

                    with open(path, "rb") as f:
                        sftp.putfo(f, remote, size, callback=cb, confirm=True)
                    done += size
            remote_shas = self._remote_sha256([posixpath.join(staging, rel) for rel, _ in files])
            for rel, _ in files:
                if remote_shas.get(posixpath.join(staging, rel)) != shas[rel]:
                    raise EdgeKitError(f"device {self.name}: {label} file {rel} arrived corrupted (sha256 differs); retry the push")
            with self._deadline(self.deadlines.command_s, f"installing {label}"):
                with sftp.open(posixpath.join(staging, DIGEST_FILE), "w") as f:
                    f.write(digest + "\n")
                try:
                    sftp.stat(final_dir)
                    old = posixpath.join(incoming, f"{leaf}.{token}.old")
                    sftp.posix_rename(final_dir, old)
                except FileNotFoundError:
                    old = None
                sftp.posix_rename(staging, final_dir)
                if old:
                    self._rmtree(old)
        except (OSError, EOFError, paramiko.SSHException) as e:
            if self._connection_lost(e):
                self._hard_close()
                raise EdgeKitError(f"device {self.name}: the connection dropped while pushing {label} ({type(e).__name__}: "
                                   f"{e}); nothing was installed, push again when the device is back") from None
            # paramiko reports a full disk only as "Failure": say what it most likely means.
            self._cleanup(staging)
            raise EdgeKitError(f"device {self.name}: writing {label} to {parent} failed ({e}); the device is probably "
                               f"out of space or the folder is not writable: free space and retry") from None
        except BaseException:
            self._cleanup(staging)
            raise
        return True

    def _connection_lost(self, e: BaseException) -> bool:
        """A dead link, as opposed to the server refusing a write. A server refusal (full disk, no
        permission) arrives as an SFTP status with a message ("Failure", "Permission denied"); a link
        cut mid-write can surface as a bare EOFError/OSError() before paramiko's transport thread has
        marked itself inactive, so the transport state alone would misread it as a full disk."""
        if isinstance(e, (EOFError, ConnectionError, paramiko.SSHException)) or not str(e).strip():
            return True
        transport = self._client.get_transport() if self._client is not None else None
        return transport is None or not transport.is_active()

    def _cleanup(self, staging: str) -> None:
        """Best effort: remove a half-written .part folder if the connection still works."""
        with contextlib.suppress(Exception):
            if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
                with self._deadline(self.deadlines.command_s, "removing the partial push"):
                    self._rmtree(staging)

    def ensure_agent(self, progress: ProgressFn = None) -> str:
        """Push the agent (versioned, reused) and the trusted public keys; returns the PYTHONPATH folder."""
        if self._agent_dir is not None:
            return self._agent_dir
        files = [(f"device_agents/{rel}", p) for rel, p in local_tree(Path(device_agents.__file__).parent)]
        agent_dir = posixpath.join(self.home, "agent", device_agents.AGENT_VERSION)
        self._makedirs(posixpath.dirname(agent_dir))
        self.upload_tree(files, agent_dir, f"agent {device_agents.AGENT_VERSION}", progress)
        self._install_trusted_keys()
        self._agent_dir = agent_dir
        return agent_dir

    def _install_trusted_keys(self) -> None:
        keys = self.trusted_keys if self.trusted_keys is not None else default_trusted_keys()
        if not keys:
            return
        folder = posixpath.join(self.home, "trusted_keys")
        self._makedirs(folder)
        sftp = self.sftp()
        with self._deadline(self.deadlines.command_s, "installing trusted keys"):
            for key in keys:
                data = Path(key).read_bytes()
                name = f"{hashlib.sha256(data).hexdigest()[:16]}.pub"
                remote = posixpath.join(folder, name)
                if self._read_small(remote) == data.decode(errors="replace").strip():
                    continue
                tmp = remote + f".{secrets.token_hex(4)}.part"
                with sftp.open(tmp, "w") as f:
                    f.write(data)
                sftp.posix_rename(tmp, remote)

    def _forced_push(self, bundle_path: Path, bundle_id: str, progress: ProgressFn, check_space: bool) -> str:
        """Behind the forced-command agent there is no SFTP: `have`, then a tar on the `receive` verb's stdin."""
        files = local_tree(bundle_path)
        digest, _ = tree_digest(files)
        label = f"bundle {bundle_id}"

        def agent(args: list[str], timeout: float, stdin: bytes | None = None) -> dict:
            code, out, err = self.exec(shlex.join(args), timeout, stdin=stdin)
            lines = out.decode(errors="replace").strip().splitlines()
            try:
                doc = json.loads(lines[-1])
            except (IndexError, json.JSONDecodeError):
                raise EdgeKitError(f"device {self.name}: the forced-command agent answered {args[0]} with no JSON "
                                   f"(exit {code}): {err.decode(errors='replace').strip()[-200:]}") from None
            if not doc.get("ok"):
                e = doc.get("error") or {}
                raise EdgeKitError(f"device {self.name}: {args[0]} of {label} refused [{e.get('code')}]: {e.get('message')}")
            return doc["result"]

        state = agent(["have", "--bundle-id", bundle_id, "--digest", digest], self.deadlines.command_s)
        if state["present"]:
            return state["path"]
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as buf:
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, path in files:
                    info = tar.gettarinfo(str(path), arcname=rel)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
            data = (buf.seek(0), buf.read())[1]
        need = 2 * len(data) + (1 << 20)
        if check_space and state.get("free_bytes") is not None and state["free_bytes"] < need:
            raise EdgeKitError(f"device {self.name}: the bundles folder has {state['free_bytes'] / 1e6:.1f} MB free but "
                               f"{label} needs {need / 1e6:.1f} MB; free space on the device and retry")
        report(progress, label, 0, len(data))
        result = agent(["receive", "--bundle-id", bundle_id, "--digest", digest, "--size", str(len(data)),
                        "--sha256", hashlib.sha256(data).hexdigest()], self.deadlines.transfer(len(data)), stdin=data)
        report(progress, label, len(data), len(data))
        return result["path"]

    def stage_bundle(self, bundle_path: Path, progress: ProgressFn = None, check_space: bool = True) -> str:
        """Push a bundle folder to <home>/bundles/<bundle_id>/ (skipped when unchanged); returns that path."""
        bundle_path = Path(bundle_path)
        mf = bundle_path / "manifest.json"
        if not mf.is_file():
            raise EdgeKitError(f"{bundle_path}: not a bundle (no manifest.json); create one with 'edgekit package'")
        try:
            bundle_id = str(json.loads(mf.read_text()).get("bundle_id") or "")
        except json.JSONDecodeError as e:
            raise EdgeKitError(f"{mf}: not valid JSON ({e.msg})") from None
        if not _SAFE_ID.match(bundle_id):
            raise EdgeKitError(f"{mf}: bundle_id {bundle_id!r} is not a plain name; repackage the bundle")
        if self.entry.forced_command:
            return self._forced_push(bundle_path, bundle_id, progress, check_space)
        files = local_tree(bundle_path)
        final = posixpath.join(self.home, "bundles", bundle_id)
        self._makedirs(posixpath.dirname(final))
        self.upload_tree(files, final, f"bundle {bundle_id}", progress, check_space=check_space)
        return final


# --- enrolment: host keys and health checks ---------------------------------------------------
def fetch_host_key(entry: DeviceEntry, timeout: float = 15.0, ssh_config: str | Path | None = None) -> tuple[str, paramiko.PKey]:
    """The host key a device offers, without authenticating: (known_hosts name, key)."""
    host, port, _, _, cfg = SshDevice(entry, connect=False, ssh_config=ssh_config).target()
    where = known_hosts_name(host, port)
    sock = None
    try:
        sock = paramiko.ProxyCommand(cfg["proxycommand"]) if cfg.get("proxycommand") else \
            socket.create_connection((host, port), timeout=timeout)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = timeout
        try:
            transport.start_client(timeout=timeout)
            return where, transport.get_remote_server_key()
        finally:
            transport.close()
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise EdgeKitError(f"device {entry.name}: cannot read the host key of {where} ({type(e).__name__}: {e}); "
                           f"check that the device is on and sshd listens there") from None
    finally:
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()


def record_host_key(known_hosts: Path, where: str, key: paramiko.PKey, replace: bool = False) -> bool:
    """Add `where key` to a known_hosts file (atomically). False if that exact key is already there.

    A different key already recorded for `where` is refused unless replace=True (a changed key is
    what an attack looks like).
    """
    known_hosts = Path(known_hosts)
    lines = known_hosts.read_text().splitlines() if known_hosts.is_file() else []
    keep, line_new = [], f"{where} {key.get_name()} {key.get_base64()}"
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and where in parts[0].split(","):
            if parts[1] == key.get_name() and parts[2] == key.get_base64():
                return False
            if parts[1] == key.get_name() and not replace:
                raise EdgeKitError(f"{known_hosts}: {where} is recorded with a DIFFERENT {parts[1]} key; if the device was "
                                   f"reinstalled, run 'edgekit devices trust NAME --replace' after checking the fingerprint")
            if parts[1] == key.get_name():
                continue
        keep.append(line)
    keep.append(line_new)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    tmp = known_hosts.with_name(known_hosts.name + f".{secrets.token_hex(4)}.part")
    tmp.write_text("\n".join(keep) + "\n")
    os.replace(tmp, known_hosts)
    return True


@dataclass
class DeviceCheck:
    name: str
    ok: bool
    seconds: float
    error: str | None = None
    info: dict | None = None


def check_device(entry: DeviceEntry, deadlines: Deadlines | None = None, timeout: float = 60.0) -> DeviceCheck:
    """Connect, push the agent if needed and run `info`: is this device ready to measure?"""
    from kit.devices.inventory import connect

    t0 = time.monotonic()
    try:
        kwargs = {"deadlines": deadlines} if entry.name != "local" and deadlines else {}
        with connect(entry, **kwargs) as dev:
            doc = dev.run_agent(["info"], timeout=timeout)
        if not doc.get("ok"):
            err = doc.get("error", {})
            return DeviceCheck(entry.name, False, time.monotonic() - t0, f"agent error [{err.get('code')}]: {err.get('message')}")
        return DeviceCheck(entry.name, True, time.monotonic() - t0, None, doc.get("result"))
    except EdgeKitError as e:
        return DeviceCheck(entry.name, False, time.monotonic() - t0, str(e))
