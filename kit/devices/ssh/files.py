"""Files on an SSH device: SFTP, atomic folder uploads, the agent and its trusted keys, bundles.

- Pushes go to <home>/bundles/.incoming/<id>.<token>.part/, are checked with sha256sum on the
  device, then renamed into <home>/bundles/<id>/ in one posix_rename. A push cut half-way leaves
  only a .part folder the agent never looks at; the next push removes it and starts over. A folder
  already on the device with the same content digest (device_agents.protocol.digest_rows) is not
  sent again. Free space is checked before sending.
- Behind the forced-command agent there is no SFTP: bundles go as a tar on its `receive` verb.
- Errors are typed: a dead link is LinkLost (retryable); the device refusing a write (full disk,
  no permission) is a DeviceError naming the device, the folder and the space (not retryable).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
import secrets
import shlex
import stat
import tarfile
import tempfile
from pathlib import Path

import paramiko
from paramiko.sftp import CMD_EXTENDED

import device_agents
from device_agents.protocol import DIGEST_FILE, SAFE_ID, digest_rows, sha256_file
from kit.devices.base import result_of
from kit.devices.enrol import default_trusted_keys
from kit.devices.ssh.connection import LINK_ERRORS, SshConnection
from kit.errors import DeviceError, EdgeKitError
from kit.progress import ProgressFn, report

__all__ = ["DIGEST_FILE", "SshDevice", "local_tree", "tree_digest"]


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
    """(content digest of the folder as the device computes it, {name: sha256})."""
    shas = {rel: sha256_file(str(p)) for rel, p in files}
    return digest_rows((rel, shas[rel], p.stat().st_size) for rel, p in files), shas


class SshDevice(SshConnection):
    """One device over SSH (kit.devices.base.Device). Connects on creation; use as a context manager."""

    # --- SFTP ------------------------------------------------------------------------------
    def sftp(self) -> paramiko.SFTPClient:
        if self.entry.forced_command:
            raise DeviceError(self.name, "is behind the forced-command agent, which allows no SFTP; bundles go "
                                         "through stage_bundle (its receive verb), the agent code with the enrolment key")
        if self._sftp is None:
            transport = self._transport()
            with self._on_device("opening SFTP"), self._deadline(self.deadlines.connect_s, "opening SFTP"):
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            # Without this a frozen peer blocks a read/write forever (checked: 45 s+ with keepalive on).
            self._sftp.get_channel().settimeout(self.deadlines.io_idle_s)
        return self._sftp

    def _connection_lost(self, e: BaseException) -> bool:
        """A dead link, as opposed to the server refusing a write. A server refusal (full disk, no
        permission) arrives as an SFTP status with a message ("Failure", "Permission denied"); a link
        cut mid-write can surface as a bare EOFError/OSError() before paramiko's transport thread has
        marked itself inactive, so the transport state alone would misread it as a full disk."""
        if isinstance(e, (EOFError, ConnectionError, TimeoutError, paramiko.SSHException, paramiko.SFTPError)):
            return True
        return not str(e).strip() or not self._alive()

    @contextlib.contextmanager
    def _on_device(self, what: str):
        """Type what paramiko raises while doing `what`: LinkLost for the link, DeviceError for a refusal."""
        try:
            yield
        except LINK_ERRORS as e:
            if self._connection_lost(e):
                raise self._link_lost(what, e) from None
            raise DeviceError(self.name, f"{what} failed ({type(e).__name__}: {e}); check that the folder on "
                                         f"the device is writable and has free space") from None

    @property
    def home(self) -> str:
        """The agent home on the device, absolute ("~" resolved through SFTP's starting folder)."""
        if self._home is None:
            home = self.entry.home
            if home.startswith("~") or not home.startswith("/"):
                sftp = self.sftp()
                with self._on_device("resolving the home folder"), \
                        self._deadline(self.deadlines.command_s, "resolving the home folder"):
                    user_home = sftp.normalize(".")
                home = posixpath.join(user_home, home[2:] if home.startswith("~/") else home.lstrip("~"))
            self._home = posixpath.normpath(home)
        return self._home

    def _makedirs(self, path: str) -> None:
        sftp = self.sftp()
        cur = ""
        for part in path.strip("/").split("/"):
            cur += "/" + part
            try:
                sftp.stat(cur)
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    sftp.mkdir(cur, 0o755)
                sftp.stat(cur)  # raises if it still is not there (permissions)

    def _read_small(self, path: str) -> str | None:
        """A small text file's content; None when it is missing or unreadable (a dead link raises)."""
        try:
            with self.sftp().open(path, "r") as f:
                return f.read(4096).decode(errors="replace").strip()
        except LINK_ERRORS as e:
            if self._connection_lost(e):
                raise
            return None

    def _rmtree(self, path: str) -> None:
        sftp = self.sftp()
        try:
            entries = sftp.listdir_attr(path)
        except FileNotFoundError:
            return
        for a in entries:
            child = posixpath.join(path, a.filename)
            if stat.S_ISDIR(a.st_mode or 0):
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
            raise DeviceError(self.name, "sha256sum is not installed; install coreutils (or busybox) on the device")
        got = {}
        for line in out.decode(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            got[name.strip()] = digest.strip()
        return got

    # --- atomic folder upload --------------------------------------------------------------
    def upload_tree(self, files: list[tuple[str, Path]], final_dir: str, label: str, progress: ProgressFn = None,
                    check_space: bool = True) -> bool:
        """Atomically install `files` as the folder `final_dir`; False when an identical copy is there already."""
        digest, shas = tree_digest(files)
        with self._on_device(f"preparing {label}"):
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
                    raise DeviceError(self.name, f"{parent} has {free / 1e6:.1f} MB free but {label} needs "
                                                 f"{need / 1e6:.1f} MB; free space on the device (or set a roomier "
                                                 f"'home') and retry")
        staging = posixpath.join(incoming, f"{leaf}.{secrets.token_hex(4)}.part")
        try:
            self._send(files, staging, label, total, progress)
            remote_shas = self._remote_sha256([posixpath.join(staging, rel) for rel, _ in files])
            for rel, _ in files:
                if remote_shas.get(posixpath.join(staging, rel)) != shas[rel]:
                    raise DeviceError(self.name, f"{label} file {rel} arrived corrupted (sha256 differs); retry the push")
            with self._deadline(self.deadlines.command_s, f"installing {label}"):
                self._install(staging, final_dir, digest)
        except LINK_ERRORS as e:
            if self._connection_lost(e):
                raise self._link_lost(f"pushing {label}", e,
                                      "nothing was installed, push again when the device is back") from None
            # paramiko reports a full disk only as "Failure": say what it most likely means.
            self._cleanup(staging)
            raise DeviceError(self.name, f"writing {label} to {parent} failed ({e}); the device is probably out of "
                                         f"space or the folder is not writable: free space and retry") from None
        except BaseException:
            self._cleanup(staging)
            raise
        return True

    def _send(self, files: list[tuple[str, Path]], staging: str, label: str, total: int, progress: ProgressFn) -> None:
        sftp, done = self.sftp(), 0
        report(progress, label, 0, total)
        with self._deadline(self.deadlines.transfer(total), f"pushing {label}"):
            self._makedirs(staging)
            for rel, path in files:
                remote = posixpath.join(staging, rel)
                if "/" in rel:
                    self._makedirs(posixpath.dirname(remote))
                size, base = path.stat().st_size, done

                def cb(sent, _size, base=base):
                    report(progress, label, base + sent, total)

                with open(path, "rb") as f:
                    sftp.putfo(f, remote, size, callback=cb, confirm=True)
                done += size

    def _install(self, staging: str, final_dir: str, digest: str) -> None:
        """Mark the verified staging folder and swap it in with posix_rename."""
        sftp = self.sftp()
        with sftp.open(posixpath.join(staging, DIGEST_FILE), "w") as f:
            f.write(digest + "\n")
        old = posixpath.join(posixpath.dirname(staging), posixpath.basename(staging)[:-len(".part")] + ".old")
        try:
            sftp.stat(final_dir)
            sftp.posix_rename(final_dir, old)
        except FileNotFoundError:
            old = None
        sftp.posix_rename(staging, final_dir)
        if old:
            self._rmtree(old)

    def _cleanup(self, staging: str) -> None:
        """Best effort: remove a half-written .part folder if the connection still works."""
        with contextlib.suppress(Exception):
            if self._alive():
                with self._deadline(self.deadlines.command_s, "removing the partial push"):
                    self._rmtree(staging)

    # --- the agent and its trusted keys ---------------------------------------------------
    def ensure_agent(self, progress: ProgressFn = None) -> str:
        """Push the agent (versioned, reused) and the trusted public keys; returns the PYTHONPATH folder."""
        if self._agent_dir is not None:
            return self._agent_dir
        files = [(f"device_agents/{rel}", p) for rel, p in local_tree(Path(device_agents.__file__).parent)]
        keys = self._trusted_key_lines()
        with self._on_device("installing the agent"):
            agent_dir = posixpath.join(self.home, "agent", device_agents.AGENT_VERSION)
            self._makedirs(posixpath.dirname(agent_dir))
            self.upload_tree(files, agent_dir, f"agent {device_agents.AGENT_VERSION}", progress)
            self._install_trusted_keys(keys)
        self._agent_dir = agent_dir
        return agent_dir

    def _trusted_key_lines(self) -> list[bytes]:
        out = []
        for key in self.trusted_keys if self.trusted_keys is not None else default_trusted_keys():
            try:
                out.append(Path(key).read_bytes())
            except OSError as e:
                raise EdgeKitError(f"trusted key {key}: cannot read ({e.strerror}); fix trusted_keys or "
                                   f"run 'edgekit keys init'") from None
        return out

    def _install_trusted_keys(self, keys: list[bytes]) -> None:
        if not keys:
            return
        folder = posixpath.join(self.home, "trusted_keys")
        self._makedirs(folder)
        sftp = self.sftp()
        with self._deadline(self.deadlines.command_s, "installing trusted keys"):
            for data in keys:
                remote = posixpath.join(folder, f"{hashlib.sha256(data).hexdigest()[:16]}.pub")
                if self._read_small(remote) == data.decode(errors="replace").strip():
                    continue
                tmp = remote + f".{secrets.token_hex(4)}.part"
                with sftp.open(tmp, "w") as f:
                    f.write(data)
                sftp.posix_rename(tmp, remote)

    def _agent_command(self, args: list[str]) -> str:
        if self.entry.forced_command:
            return shlex.join(args)  # forced.py on the device re-parses this, no shell involved
        agent_dir = self.ensure_agent()
        return (f"env EDGEKIT_HOME={shlex.quote(self.home)} PYTHONPATH={shlex.quote(agent_dir)} "
                f"{shlex.quote(self.entry.python)} -m device_agents {shlex.join(args)}")

    # --- bundles ---------------------------------------------------------------------------
    def stage_bundle(self, bundle_path: Path, progress: ProgressFn = None, check_space: bool = True) -> str:
        """Push a bundle folder to <home>/bundles/<bundle_id>/ (skipped when unchanged); returns that path."""
        bundle_path = Path(bundle_path)
        bundle_id = _bundle_id(bundle_path)
        files = local_tree(bundle_path)
        if self.entry.forced_command:
            return self._forced_push(files, bundle_id, progress, check_space)
        with self._on_device(f"staging bundle {bundle_id}"):
            final = posixpath.join(self.home, "bundles", bundle_id)
            self._makedirs(posixpath.dirname(final))
            self.upload_tree(files, final, f"bundle {bundle_id}", progress, check_space=check_space)
        return final

    def _forced_push(self, files: list[tuple[str, Path]], bundle_id: str, progress: ProgressFn, check_space: bool) -> str:
        """Behind the forced-command agent there is no SFTP: `have`, then a tar on the `receive` verb's stdin."""
        digest, _ = tree_digest(files)
        label = f"bundle {bundle_id}"

        def agent(args: list[str], timeout: float, stdin: bytes | None = None, step: str | None = None) -> dict:
            return result_of(self.name, args[0], self._agent_reply(args, timeout, stdin=stdin, step=step))

        state = agent(["have", "--bundle-id", bundle_id, "--digest", digest], self.deadlines.command_s)
        if state["present"]:
            return state["path"]
        data = _tar(files)
        need = 2 * len(data) + (1 << 20)
        if check_space and state.get("free_bytes") is not None and state["free_bytes"] < need:
            raise DeviceError(self.name, f"the bundles folder has {state['free_bytes'] / 1e6:.1f} MB free but "
                                         f"{label} needs {need / 1e6:.1f} MB; free space on the device and retry")
        report(progress, label, 0, len(data))
        result = agent(["receive", "--bundle-id", bundle_id, "--digest", digest, "--size", str(len(data)),
                        "--sha256", hashlib.sha256(data).hexdigest()], self.deadlines.transfer(len(data)), stdin=data,
                       step=f"the push of {label} (the agent's receive, {len(data)} bytes)")
        report(progress, label, len(data), len(data))
        return result["path"]


def _bundle_id(bundle_path: Path) -> str:
    mf = bundle_path / "manifest.json"
    if not mf.is_file():
        raise EdgeKitError(f"{bundle_path}: not a bundle (no manifest.json); create one with 'edgekit package'")
    try:
        bundle_id = str(json.loads(mf.read_text()).get("bundle_id") or "")
    except json.JSONDecodeError as e:
        raise EdgeKitError(f"{mf}: not valid JSON ({e.msg})") from None
    if not SAFE_ID.match(bundle_id):
        raise EdgeKitError(f"{mf}: bundle_id {bundle_id!r} is not a plain name; repackage the bundle")
    return bundle_id


def _tar(files: list[tuple[str, Path]]) -> bytes:
    """The files as one PAX tar, owner-neutral (what the forced agent's `receive` unpacks)."""
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as buf:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, path in files:
                info = tar.gettarinfo(str(path), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        buf.seek(0)
        return buf.read()
