"""The running device: a fresh overlay on the cached root file system and the rootfs's own aarch64
sshd, in a private mount + PID namespace; stopping it undoes everything starting it made."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report
from kit.testbed.pi.binfmt import binfmt_hold, binfmt_registered, binfmt_release, binfmt_setup
from kit.testbed.pi.cgroup import join_cgroup, make_cgroup, remove_cgroup
from kit.testbed.pi.host import cache_dir, require_tools, run_tool, runs_dir
from kit.testbed.pi.rootfs import PiRecipe, build_rootfs, cached_rootfs
from kit.testbed.pi.state import DEFAULT_NAME, EmulatedPi, load_pi, namespace_alive, running, write_state
from kit.testbed.ports import free_port

SSHD_DIR = "etc/edgekit-sshd"
SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey /{sshd_dir}/host_ed25519
PidFile /run/edgekit-sshd.pid
AuthorizedKeysFile /{sshd_dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
PrintMotd no
Subsystem sftp internal-sftp
MaxStartups 100:30:200
LoginGraceTime 120
SetEnv QEMU_CPU={cpu}
"""
# qemu-user emulates `-cpu max` (every ARM feature it knows) unless told otherwise, and XNNPACK then
# picks kernels no Pi has (an int8 .pte gave wrong logits under `max`): emulate the board's own core.
# QEMU_CPU reaches every emulated process: sshd is started with it, SetEnv gives it to each session.
BOARD_CPUS = {"pi4": "cortex-a72", "pi5": "cortex-a76"}
# The namespace's first process: mount the overlay and /proc (never /sys, see kit.testbed.pi),
# then become the aarch64 sshd. Arguments are passed positionally, never pasted into the script.
_NS_SCRIPT = (
    'set -e; mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"; '
    'mount -t proc proc "$4/proc"; exec chroot "$4" /usr/sbin/sshd -D -e -f "/$5/sshd_config"'
)


def _keygen(path: Path, comment: str, what: str) -> None:
    # Keys are made on the host (fast, native ssh-keygen); only their use happens on aarch64.
    run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], f"ssh-keygen ({what})")


def _prepare_layer(run: Path, name: str, keys: list[Path], cpu: str) -> tuple[Path, Path, int]:
    """The writable layer: trusted keys, sshd keys and config. Returns (client key, known_hosts, port)."""
    if run.exists():
        shutil.rmtree(run)
    upper = run / "upper"
    for d in (upper / SSHD_DIR, upper / "run/sshd", upper / "root/.edgekit/trusted_keys", run / "work", run / "merged"):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(upper / "root", 0o700)
    # No sysfs is mounted (see kit.testbed.pi), but XNNPACK's cpuinfo needs the CPU lists to start at
    # all (the native .pte runner): plain files in the writable layer give it the two it parses first.
    cpu_dir = upper / "sys/devices/system/cpu"
    cpu_dir.mkdir(parents=True, exist_ok=True)
    for f in ("possible", "present", "online"):
        (cpu_dir / f).write_text(f"0-{max(1, os.cpu_count() or 1) - 1}\n")
    for k in keys:
        shutil.copyfile(k, upper / "root/.edgekit/trusted_keys" / k.name)
    _keygen(upper / SSHD_DIR / "host_ed25519", f"{name}-host", "host key")
    client = run / "client_ed25519"
    _keygen(client, f"edgekit@{name}", "client key")
    shutil.copyfile(f"{client}.pub", upper / SSHD_DIR / "authorized_keys")
    port = free_port()
    (upper / SSHD_DIR / "sshd_config").write_text(SSHD_CONFIG.format(port=port, sshd_dir=SSHD_DIR, cpu=cpu))
    host_pub = (upper / SSHD_DIR / "host_ed25519.pub").read_text().split()
    known_hosts = run / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return client, known_hosts, port


def _wait_for_banner(port: int, pid: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not namespace_alive(pid):
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise EdgeKitError(f"emulate-pi: sshd exited during start: {' | '.join(tail)[:300]} (log {log})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(30)
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise EdgeKitError(f"emulate-pi: sshd gave no SSH banner on 127.0.0.1:{port} within {timeout:g} s (log {log})")


def _launch(pi: EmulatedPi, cg: Path | None) -> subprocess.Popen:
    """Start the namespace (overlay, /proc, sshd); sshd and every session inherit the cgroup."""
    run = Path(pi.run_dir)
    with open(run / "sshd.log", "wb") as logf:
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
             "sh", "-c", _NS_SCRIPT, "sh", pi.rootfs, str(run / "upper"), str(run / "work"), str(run / "merged"),
             SSHD_DIR],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=(lambda: join_cgroup(cg)) if cg is not None else None,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "QEMU_CPU": pi.cpu or BOARD_CPUS["pi5"]})


def start_pi(name: str = DEFAULT_NAME, *, recipe: PiRecipe | None = None, cpu_quota: float | None = None,
             inventory: str | Path | None = None, register: bool = True,
             trusted_keys: list[str | Path] | None = None, timeout: float = 180,
             progress: ProgressFn = None, board: str = "pi5") -> EmulatedPi:
    """Start the emulated Pi `name`: a fresh writable layer over the cached rootfs, its own sshd on a
    free 127.0.0.1 port, our signing key trusted by its agent, and an inventory entry (emulated: true).

    trusted_keys: public key files for <agent home>/trusted_keys (default: the kit's signing key(s),
    kit.devices.enrol.default_trusted_keys(), if any exist). inventory: file to register in (default:
    the default inventory); register=False skips it. board: "pi5" (qemu -cpu cortex-a76) or "pi4" (cortex-a72).
    """
    from kit.devices import DeviceEntry, Inventory
    from kit.devices.enrol import default_trusted_keys

    DeviceEntry(name=name, host="127.0.0.1")  # validates the name before anything is made
    if board not in BOARD_CPUS:
        raise EdgeKitError(f"emulate-pi: board {board!r} is not one of {', '.join(BOARD_CPUS)}")
    require_tools()
    old = load_pi(name)
    if old is not None:
        if namespace_alive(old.pid):
            raise EdgeKitError(f"emulate-pi: {name} is already running on 127.0.0.1:{old.port}; "
                               f"stop it first (edgekit emulate-pi stop --name {name})")
        stop_pi(name)  # leftovers of a crashed run
    rootfs = build_rootfs(recipe, progress=progress)
    if any(c in str(rootfs.path) for c in ",:"):
        raise EdgeKitError(f"emulate-pi: the cache path {rootfs.path} holds ',' or ':' which overlayfs cannot take; "
                           "set EDGEKIT_CACHE to a plain path")
    keys = [Path(k) for k in trusted_keys] if trusted_keys is not None else default_trusted_keys()
    for k in keys:
        if not k.exists():
            raise EdgeKitError(f"emulate-pi: trusted key {k} does not exist; run 'edgekit keys init' or pass another")
    run = runs_dir() / name
    client, known_hosts, port = _prepare_layer(run, name, keys, BOARD_CPUS[board])

    binfmt_setup(os.getpid())  # held by this process until the namespace's PID takes over below
    try:
        cg = make_cgroup(name, cpu_quota) if cpu_quota else None
        pi = EmulatedPi(name=name, port=port, pid=0, run_dir=str(run), rootfs=str(rootfs.path),
                        rootfs_key=rootfs.key, client_key=str(client), known_hosts=str(known_hosts), start_s=0.0,
                        cpu_quota=cpu_quota, cgroup=str(cg) if cg else None, trusted_keys=[str(k) for k in keys],
                        board=board, cpu=BOARD_CPUS[board])
        report(progress, f"starting sshd on 127.0.0.1:{port}", 0, 1)
        t0 = time.monotonic()
        try:
            proc = _launch(pi, cg)
        except BaseException:
            remove_cgroup(pi.cgroup)
            raise
        pi.pid = proc.pid
        binfmt_hold(proc.pid)  # the namespace holds the handler from now on
        write_state(pi)  # from here on stop_pi can clean up, whatever happens next
    finally:
        binfmt_release(os.getpid())
    try:
        _wait_for_banner(port, proc.pid, timeout, run / "sshd.log")
        pi.start_s = round(time.monotonic() - t0, 2)
        if register:
            # A named inventory that does not exist yet is started empty (registering creates it).
            inv = Inventory.load(inventory) if inventory is None or Path(inventory).exists() else Inventory({}, Path(inventory))
            inv.add(pi.entry(), replace=True)
            pi.inventory = str(inv.save())
        write_state(pi)
    except BaseException:
        stop_pi(name)
        raise
    report(progress, f"{name} up on 127.0.0.1:{port}", 1, 1)
    return pi


def _end_namespace(pid: int, timeout: float) -> None:
    # unshare ignores SIGTERM while it waits, so: SIGTERM its child, sshd (PID 1 of the namespace:
    # its death kills every session in it), then SIGKILL unshare, whose --kill-child makes sure of
    # sshd. The namespace's mounts (overlay, /proc) go with its last process.
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            os.kill(int(child), signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + min(timeout, 5)
    while namespace_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if namespace_alive(pid):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while namespace_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _reap(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # reap it if we are its parent (library use in one process)
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return  # not our child: its parent (init, after a CLI start) reaps it
        time.sleep(0.05)


def _wait_namespace_gone(pi: EmulatedPi, timeout: float = 10) -> None:
    """Wait until no process runs inside the device's root any more (its mounts are gone with them)."""
    merged = os.path.realpath(Path(pi.run_dir) / "merged")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.readlink(p / "root") == merged:
                        busy = True
                        break
                except OSError:
                    continue
        if not busy:
            return
        time.sleep(0.1)
    raise EdgeKitError(f"emulate-pi: processes still run inside {merged} after stop; check 'ps' and kill them")


def _unregister(pi: EmulatedPi) -> None:
    from kit.devices import Inventory

    try:
        inv = Inventory.load(pi.inventory)
        if pi.name in inv.devices and inv.devices[pi.name].port == pi.port:
            inv.remove(pi.name)
            inv.save()
    except EdgeKitError:
        pass  # an inventory the user has since broken or removed is theirs to fix


def stop_pi(name: str = DEFAULT_NAME, timeout: float = 30) -> bool:
    """Stop `name` and undo everything start_pi made; returns False if it was not running."""
    pi = load_pi(name)
    if pi is None:
        return False
    was_running = namespace_alive(pi.pid)
    if was_running:
        _end_namespace(pi.pid, timeout)
    _reap(pi.pid, timeout)
    _wait_namespace_gone(pi)
    remove_cgroup(pi.cgroup)
    if pi.inventory:
        _unregister(pi)
    shutil.rmtree(pi.run_dir, ignore_errors=True)
    binfmt_release(pi.pid)  # the last user out undoes the shared handler
    return was_running


def status() -> dict:
    """What is cached and what is running (JSON-able)."""
    return {"cache": str(cache_dir()), "rootfs": cached_rootfs(),
            "running": [{"name": p.name, "port": p.port, "pid": p.pid, "start_s": p.start_s,
                         "cpu_quota": p.cpu_quota, "inventory": p.inventory} for p in running()],
            "binfmt_registered": binfmt_registered()}


class emulated_pi:
    """Context manager: start_pi on enter, stop_pi on exit (even on failure)."""

    def __init__(self, name: str = DEFAULT_NAME, **kw):
        self.name, self.kw = name, kw

    def __enter__(self) -> EmulatedPi:
        return start_pi(self.name, **self.kw)

    def __exit__(self, *exc):
        stop_pi(self.name)
