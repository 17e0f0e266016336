"""An emulated Raspberry Pi: an aarch64 Debian root file system run under qemu user-mode emulation.

The device is real ARM code end to end: its own aarch64 OpenSSH sshd (and sftp-server), aarch64
python3, and the aarch64 ONNX Runtime wheel, all run by qemu-aarch64-static through binfmt_misc.
The kit reaches it like any Pi, over SSH on a free 127.0.0.1 port.

  build_rootfs()  debootstrap (foreign + second stage under qemu) + device wheels from the host's pip,
                  cached in <cache>/pi-rootfs/<recipe hash>/ and rebuilt only when the recipe changes.
  start_pi()      overlay a fresh writable layer on the cached root file system, generate keys,
                  start sshd in a private mount + PID namespace, register the device in an inventory.
  stop_pi()       kill that namespace by PID (its mounts vanish with it), remove the cgroup, the
                  inventory entry and the run folder; the last user out also undoes the binfmt
                  registration and the binfmt_misc mount, if the kit made them.

Why the rootfs's own sshd rather than the host's sshd running the rootfs's aarch64 python: the whole
SSH path (key exchange, sftp-server, the session shell) is then aarch64 code too, as on a real Pi,
with no host paths to translate. Its cost, measured by benchmarks/emulated_pi.py: connect + auth
0.84 s against 0.13 s for a native sshd, paid once per connection (a bench keeps one open).

Why a private mount + PID namespace: every mount (overlay, /proc) lives only in that namespace and
the kernel removes them when its first process (sshd) dies, so a crashed test cannot leak mounts.
Only /proc is mounted inside, not /sys: with both, `import onnxruntime` segfaults under qemu;
without /sys, ORT's cpuinfo prints a warning and falls back to baseline NEON kernels.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

# Bump when the build steps change in a way the recipe fields do not show.
BUILD_SCRIPT_VERSION = 1
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-aarch64"
QEMU = Path("/usr/bin/qemu-aarch64-static")
# The same registration Debian's binfmt.d file carries (flags F: the interpreter is opened at
# registration, so it works inside a chroot that has no qemu binary; P: keep argv[0]).
BINFMT_FALLBACK = (r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
                   r":\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
                   r":/usr/bin/qemu-aarch64-static:F")
SITE = "usr/local/lib/python3.11/dist-packages"  # on Debian's python3 sys.path without PYTHONPATH
SSHD_DIR = "etc/edgekit-sshd"


@dataclass(frozen=True)
class PiRecipe:
    """Everything the root file system is made from; its hash names the cache folder."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "ca-certificates", "openssh-server", "openssh-sftp-server")
    wheels: tuple[str, ...] = ("onnxruntime==1.32.0", "numpy==2.4.6")
    wheel_platform: str = "manylinux_2_28_aarch64"
    python_version: str = "3.11"
    script_version: int = BUILD_SCRIPT_VERSION

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RootfsInfo:
    path: Path                # the root file system folder
    key: str
    built: bool               # True if this call built it, False if it came from the cache
    build_s: float            # seconds this call spent (0-ish when cached)
    recorded_build_s: float   # seconds the cold build took when it was made
    python: str = ""
    runtimes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def cache_dir() -> Path:
    env = os.environ.get("EDGEKIT_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "edgekit") / "pi-rootfs"


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise EdgeKitError("emulate-pi: needs root (debootstrap, chroot, binfmt_misc, mount namespaces); run it as root")
    missing = [t for t in ("debootstrap", "unshare", "chroot", "ssh-keygen") if shutil.which(t) is None]
    if not QEMU.exists():
        missing.append(str(QEMU))
    if missing:
        raise EdgeKitError(f"emulate-pi: missing {', '.join(missing)}; "
                           "apt-get install qemu-user-static debootstrap openssh-client util-linux")


def _run(cmd: list[str], what: str, timeout: float = 3600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EdgeKitError(f"emulate-pi: {what} failed (exit {proc.returncode}): {' | '.join(tail)[:400]}")
    return proc


# ---------------------------------------------------------------------------------------------
# binfmt_misc: mounted and registered by hand (the Debian package registers nothing here).
# The handler is host-wide and shared by every build and running Pi (whatever their cache folder),
# so the kit keeps host-wide bookkeeping in /run: what it changed, and one holder file per process
# that needs the handler (a build: its own PID; a Pi: its namespace PID). The last holder out
# (no live holder left) undoes what the kit changed, and nothing it did not.

BINFMT_STATE = Path("/run/edgekit-pi")


def _read_marker() -> dict:
    try:
        return json.loads((BINFMT_STATE / "binfmt-made.json").read_text())
    except (OSError, ValueError):
        return {}


def binfmt_setup(holder: int) -> dict:
    """Make aarch64 ELF files run through qemu for `holder` (a PID); returns what the kit changed."""
    (BINFMT_STATE / "holders").mkdir(parents=True, exist_ok=True)
    (BINFMT_STATE / "holders" / str(holder)).touch()
    made = _read_marker()
    if not (BINFMT_DIR / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc")
        made["mounted"] = True
    entry = BINFMT_DIR / BINFMT_NAME
    if entry.exists():
        if "F" not in _binfmt_flags(entry):
            raise EdgeKitError(f"emulate-pi: {entry} is registered without the F flag; "
                               f"remove it (echo -1 > {entry}) and retry")
    else:
        line = BINFMT_FALLBACK
        conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
        if conf.exists():
            line = conf.read_text().strip()
            if "F" not in line.rsplit(":", 1)[1]:
                line += "F"
        with open(BINFMT_DIR / "register", "w") as f:
            f.write(line)
        made["registered"] = True
    (BINFMT_STATE / "binfmt-made.json").write_text(json.dumps(made))
    return made


def _binfmt_flags(entry: Path) -> str:
    for ln in entry.read_text().splitlines():
        if ln.startswith("flags:"):
            return ln.split(":", 1)[1].strip()
    return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and ") Z " in stat.read_text())


def binfmt_release(holder: int) -> bool:
    """Drop `holder`; if no live holder remains, undo what the kit changed. True if it undid it."""
    holders = BINFMT_STATE / "holders"
    (holders / str(holder)).unlink(missing_ok=True)
    live = False
    for h in holders.iterdir() if holders.exists() else []:
        if h.name.isdigit() and _pid_alive(int(h.name)):
            live = True
        else:
            h.unlink(missing_ok=True)  # a holder that died without releasing (a crashed build)
    made = _read_marker()
    if live or not made:
        return False
    if made.get("registered") and (BINFMT_DIR / BINFMT_NAME).exists():
        (BINFMT_DIR / BINFMT_NAME).write_text("-1")
    if made.get("mounted") and (BINFMT_DIR / "register").exists():
        subprocess.run(["umount", str(BINFMT_DIR)], capture_output=True)
    (BINFMT_STATE / "binfmt-made.json").unlink(missing_ok=True)
    return True


def _build_lock():
    """An exclusive lock on the cache while a build runs (two builds would share one .partial folder)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir() / ".build.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a second build waits here, then finds the cache filled
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------------------------------------
# Root file system build (cached).

def _chroot_in_namespace(root: Path, argv: list[str], what: str, timeout: float = 3600,
                         env: dict | None = None) -> subprocess.CompletedProcess:
    """Run argv chrooted in root with /proc mounted, inside a private mount namespace (no leaks)."""
    script = 'mount -t proc proc "$1/proc" && root="$1" && shift && exec chroot "$root" "$@"'
    return _run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                 "sh", "-c", script, "sh", str(root), *argv], what, timeout=timeout,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root", **(env or {})})


def build_rootfs(recipe: PiRecipe | None = None, *, force: bool = False, progress: ProgressFn = None) -> RootfsInfo:
    """Build (or reuse) the aarch64 root file system for `recipe`; returns where it is."""
    recipe = recipe or PiRecipe()
    key = recipe.key()
    final = cache_dir() / key
    done_marker = final / "build.json"
    if done_marker.exists() and not force:
        meta = json.loads(done_marker.read_text())
        return RootfsInfo(path=final / "rootfs", key=key, built=False, build_s=0.0,
                          recorded_build_s=meta["build_s"], python=meta.get("python", ""),
                          runtimes=meta.get("runtimes", {}))
    _require_tools()
    users = [p.name for p in running() if p.rootfs_key == key]
    if users:
        raise EdgeKitError(f"emulate-pi: {', '.join(users)} run on root file system {key}; "
                           "stop them before rebuilding it (edgekit emulate-pi stop --name NAME)")
    lock = _build_lock()
    try:
        if done_marker.exists() and not force:  # another process built it while we waited for the lock
            return build_rootfs(recipe, progress=progress)
        return _build(recipe, key, final, progress)
    finally:
        os.close(lock)  # releases the flock
        binfmt_release(os.getpid())


def _build(recipe: PiRecipe, key: str, final: Path, progress: ProgressFn) -> RootfsInfo:
    t0 = time.monotonic()
    partial = cache_dir() / f"{key}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # an interrupted build: start over (no mounts leak: they were namespaced)
    root = partial / "rootfs"
    root.mkdir(parents=True)
    binfmt_setup(os.getpid())  # build_rootfs releases it when done, whatever happens
    report(progress, "debootstrap (first stage)", 0, 4)
    _run(["debootstrap", "--arch=arm64", "--foreign", f"--variant={recipe.variant}",
          f"--include={','.join(recipe.packages)}", recipe.suite, str(root), recipe.mirror],
         "debootstrap first stage (needs the Debian mirror)")
    report(progress, "debootstrap second stage (aarch64 under qemu, ~6 min)", 1, 4)
    _chroot_in_namespace(root, ["/debootstrap/debootstrap", "--second-stage"], "debootstrap second stage")
    report(progress, "device wheels (pip, host side)", 2, 4)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--upgrade",
          "--target", str(root / SITE), "--platform", recipe.wheel_platform,
          "--python-version", recipe.python_version, "--only-binary=:all:", "--no-compile",
          *recipe.wheels], "pip install of the aarch64 wheels")
    report(progress, "checking the device python", 3, 4)
    probe = _chroot_in_namespace(root, ["python3", "-c", (
        "import json, platform, numpy, onnxruntime; print(json.dumps({'arch': platform.machine(), "
        "'python': platform.python_version(), 'runtimes': {'onnxruntime': onnxruntime.__version__, "
        "'numpy': numpy.__version__}}))")], "importing onnxruntime on the aarch64 python", timeout=600)
    facts = json.loads(probe.stdout.strip().splitlines()[-1])
    if facts["arch"] != "aarch64":
        raise EdgeKitError(f"emulate-pi: the root file system's python reports {facts['arch']}, not aarch64")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    build_s = round(time.monotonic() - t0, 1)
    meta = {"recipe": asdict(recipe), "build_s": build_s, "python": facts["python"],
            "runtimes": facts["runtimes"], "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (partial / "build.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)  # the cache entry appears whole or not at all
    report(progress, "root file system ready", 4, 4)
    return RootfsInfo(path=final / "rootfs", key=key, built=True, build_s=build_s, recorded_build_s=build_s,
                      python=facts["python"], runtimes=facts["runtimes"])


# ---------------------------------------------------------------------------------------------
# Running device: overlay + sshd in a private mount/PID namespace.

DEFAULT_NAME = "pi-emu"
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
"""
# The namespace's first process: mount the overlay and /proc (never /sys, see the module doc),
# then become the aarch64 sshd. Arguments are passed positionally, never pasted into the script.
_NS_SCRIPT = (
    'set -e; mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"; '
    'mount -t proc proc "$4/proc"; exec chroot "$4" /usr/sbin/sshd -D -e -f "/$5/sshd_config"'
)


@dataclass
class EmulatedPi:
    name: str
    port: int
    pid: int                  # the `unshare` process; its child sshd is PID 1 of the namespace
    run_dir: str
    rootfs: str
    rootfs_key: str
    client_key: str
    known_hosts: str
    start_s: float            # seconds from launching the namespace to sshd's SSH banner
    cpu_quota: float | None = None
    cgroup: str | None = None
    inventory: str | None = None
    trusted_keys: list[str] = field(default_factory=list)

    def entry(self):
        """The inventory entry the kit connects with (kit.devices.inventory.DeviceEntry)."""
        from kit.devices.inventory import DeviceEntry

        return DeviceEntry(name=self.name, host="127.0.0.1", port=self.port, user="root", key=self.client_key,
                           kind="rpi-emulated", python="python3", home="~/.edgekit", groups=["emulated"],
                           vars={"rootfs": self.rootfs_key, "cpu_quota": self.cpu_quota,
                                 "emulator": "qemu-aarch64-static (user mode)"},
                           emulated=True, known_hosts=self.known_hosts)

    def to_dict(self) -> dict:
        return asdict(self)


def runs_dir() -> Path:
    return cache_dir().parent / "pi-run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """True if pid is still our `unshare` (guards against a recycled PID)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return bool(cmd) and cmd[0].endswith(b"unshare") and ") Z " not in stat


def _wait_for_banner(port: int, pid: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
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


def _make_cgroup(name: str, cpu_quota: float) -> Path:
    """A cgroup v1 (or v2) CPU quota: cpu_quota=0.25 lets the whole device use a quarter of one core."""
    if not 0.01 <= cpu_quota <= 64:
        raise EdgeKitError(f"emulate-pi: cpu quota {cpu_quota} is out of range; give a share of one core, e.g. 0.25")
    v1 = Path("/sys/fs/cgroup/cpu")
    period = 100_000
    if (v1 / "cpu.cfs_quota_us").exists():
        cg = v1 / f"edgekit-{name}"
        cg.mkdir(exist_ok=True)
        (cg / "cpu.cfs_period_us").write_text(str(period))
        (cg / "cpu.cfs_quota_us").write_text(str(int(cpu_quota * period)))
        return cg
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text().split():
        cg = v2 / f"edgekit-{name}"
        cg.mkdir(exist_ok=True)
        (cg / "cpu.max").write_text(f"{int(cpu_quota * period)} {period}")
        return cg
    raise EdgeKitError("emulate-pi: no cgroup cpu controller here (/sys/fs/cgroup/cpu or cgroup v2 cpu.max); "
                       "start without --cpu-quota")


def _remove_cgroup(cg: str | None) -> None:
    if not cg:
        return
    for _ in range(50):  # the kernel refuses rmdir until the last task has left
        try:
            os.rmdir(cg)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def _state_path(name: str) -> Path:
    return runs_dir() / name / "state.json"


def _write_state(pi: EmulatedPi) -> None:
    path = _state_path(pi.name)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(pi.to_dict(), indent=2))
    os.replace(tmp, path)


def load_pi(name: str = DEFAULT_NAME) -> EmulatedPi | None:
    path = _state_path(name)
    if not path.exists():
        return None
    return EmulatedPi(**json.loads(path.read_text()))


def _default_trusted_keys() -> list[Path]:
    from kit.config import config_dir

    pub = config_dir() / "keys" / "signing.ed25519.pub"
    return [pub] if pub.exists() else []


def start_pi(name: str = DEFAULT_NAME, *, recipe: PiRecipe | None = None, cpu_quota: float | None = None,
             inventory: str | Path | None = None, register: bool = True,
             trusted_keys: list[str | Path] | None = None, timeout: float = 180,
             progress: ProgressFn = None) -> EmulatedPi:
    """Start the emulated Pi `name`: a fresh writable layer over the cached rootfs, its own sshd on a
    free 127.0.0.1 port, our signing key trusted by its agent, and an inventory entry (emulated: true).

    trusted_keys: public key files for <agent home>/trusted_keys (default: the kit's signing key,
    config_dir()/keys/signing.ed25519.pub, if it exists). inventory: file to register in (default:
    the default inventory); register=False skips it.
    """
    from kit.devices.inventory import DeviceEntry, Inventory

    DeviceEntry(name=name, host="127.0.0.1")  # validates the name before anything is made
    _require_tools()
    old = load_pi(name)
    if old is not None:
        if _alive(old.pid):
            raise EdgeKitError(f"emulate-pi: {name} is already running on 127.0.0.1:{old.port}; "
                               f"stop it first (edgekit emulate-pi stop --name {name})")
        stop_pi(name)  # leftovers of a crashed run
    rootfs = build_rootfs(recipe, progress=progress)
    if any(c in str(rootfs.path) for c in ",:"):
        raise EdgeKitError(f"emulate-pi: the cache path {rootfs.path} holds ',' or ':' which overlayfs cannot take; "
                           "set EDGEKIT_CACHE to a plain path")
    keys = [Path(k) for k in trusted_keys] if trusted_keys is not None else _default_trusted_keys()
    for k in keys:
        if not k.exists():
            raise EdgeKitError(f"emulate-pi: trusted key {k} does not exist; run 'edgekit keys init' or pass another")
    run = runs_dir() / name
    if run.exists():
        shutil.rmtree(run)
    upper, work, merged = run / "upper", run / "work", run / "merged"
    for d in (upper / SSHD_DIR, upper / "run/sshd", upper / "root/.edgekit/trusted_keys", work, merged):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(upper / "root", 0o700)
    for k in keys:
        shutil.copyfile(k, upper / "root/.edgekit/trusted_keys" / k.name)
    # Keys are made on the host (fast, native ssh-keygen); only their use happens on aarch64.
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}-host", "-f", str(upper / SSHD_DIR / "host_ed25519")],
         "ssh-keygen (host key)")
    client = run / "client_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgekit@{name}", "-f", str(client)], "ssh-keygen (client key)")
    shutil.copyfile(f"{client}.pub", upper / SSHD_DIR / "authorized_keys")
    port = _free_port()
    (upper / SSHD_DIR / "sshd_config").write_text(SSHD_CONFIG.format(port=port, sshd_dir=SSHD_DIR))
    host_pub = (upper / SSHD_DIR / "host_ed25519.pub").read_text().split()
    known_hosts = run / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")

    binfmt_setup(os.getpid())  # held by this process until the namespace's PID takes over below
    try:
        cg = _make_cgroup(name, cpu_quota) if cpu_quota else None
    except BaseException:
        binfmt_release(os.getpid())
        raise
    pi = EmulatedPi(name=name, port=port, pid=0, run_dir=str(run), rootfs=str(rootfs.path), rootfs_key=rootfs.key,
                    client_key=str(client), known_hosts=str(known_hosts), start_s=0.0, cpu_quota=cpu_quota,
                    cgroup=str(cg) if cg else None, trusted_keys=[str(k) for k in keys])

    def join_cgroup():  # runs in the child before exec, so sshd and every session inherit the quota
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    log = run / "sshd.log"
    report(progress, f"starting sshd on 127.0.0.1:{port}", 0, 1)
    t0 = time.monotonic()
    try:
        logf = open(log, "wb")
    except BaseException:
        _remove_cgroup(pi.cgroup)
        binfmt_release(os.getpid())
        raise
    with logf:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
             "sh", "-c", _NS_SCRIPT, "sh", str(rootfs.path), str(upper), str(work), str(merged), SSHD_DIR],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=join_cgroup if cg is not None else None,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    pi.pid = proc.pid
    _write_state(pi)  # from here on stop_pi can clean up, whatever happens next
    (BINFMT_STATE / "holders" / str(proc.pid)).touch()
    binfmt_release(os.getpid())
    try:
        _wait_for_banner(port, proc.pid, timeout, log)
        pi.start_s = round(time.monotonic() - t0, 2)
        if register:
            # A named inventory that does not exist yet is started empty (registering creates it).
            inv = Inventory.load(inventory) if inventory is None or Path(inventory).exists() else Inventory({}, Path(inventory))
            inv.add(pi.entry(), replace=True)
            pi.inventory = str(inv.save())
        _write_state(pi)
    except BaseException:
        stop_pi(name)
        raise
    report(progress, f"{name} up on 127.0.0.1:{port}", 1, 1)
    return pi


def stop_pi(name: str = DEFAULT_NAME, timeout: float = 30) -> bool:
    """Stop `name` and undo everything start_pi made; returns False if it was not running."""
    pi = load_pi(name)
    if pi is None:
        return False
    was_running = _alive(pi.pid)
    if was_running:
        # unshare ignores SIGTERM while it waits, so: SIGTERM its child, sshd (PID 1 of the namespace:
        # its death kills every session in it), then SIGKILL unshare, whose --kill-child makes sure of
        # sshd. The namespace's mounts (overlay, /proc) go with its last process.
        try:
            children = Path(f"/proc/{pi.pid}/task/{pi.pid}/children").read_text().split()
        except OSError:
            children = []
        for child in children:
            try:
                os.kill(int(child), signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + min(timeout, 5)
        while _alive(pi.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pi.pid):
            os.kill(pi.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _alive(pi.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # reap it if we are its parent (library use in one process)
        try:
            if os.waitpid(pi.pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            break  # not our child: its parent (init, after a CLI start) reaps it
        time.sleep(0.05)
    _wait_namespace_gone(pi)
    _remove_cgroup(pi.cgroup)
    if pi.inventory:
        from kit.devices.inventory import Inventory

        try:
            inv = Inventory.load(pi.inventory)
            if name in inv.devices and inv.devices[name].port == pi.port:
                inv.remove(name)
                inv.save()
        except EdgeKitError:
            pass  # an inventory the user has since broken or removed is theirs to fix
    shutil.rmtree(pi.run_dir, ignore_errors=True)
    binfmt_release(pi.pid)  # the last user out undoes the shared handler
    return was_running


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


def running() -> list[EmulatedPi]:
    """The emulated Pis whose state folder exists and whose namespace process is alive."""
    out = []
    if runs_dir().exists():
        for d in sorted(runs_dir().iterdir()):
            pi = load_pi(d.name)
            if pi is not None and _alive(pi.pid):
                out.append(pi)
    return out


def status() -> dict:
    """What is cached and what is running (JSON-able)."""
    cached = []
    if cache_dir().exists():
        for d in sorted(cache_dir().iterdir()):
            meta = d / "build.json"
            if meta.exists():
                m = json.loads(meta.read_text())
                cached.append({"key": d.name, "path": str(d / "rootfs"), "build_s": m["build_s"],
                               "built_at": m.get("built_at"), "runtimes": m.get("runtimes", {}),
                               "current": d.name == PiRecipe().key()})
    return {"cache": str(cache_dir()), "rootfs": cached,
            "running": [{"name": p.name, "port": p.port, "pid": p.pid, "start_s": p.start_s,
                         "cpu_quota": p.cpu_quota, "inventory": p.inventory} for p in running()],
            "binfmt_registered": (BINFMT_DIR / BINFMT_NAME).exists()}


class emulated_pi:
    """Context manager: start_pi on enter, stop_pi on exit (even on failure)."""

    def __init__(self, name: str = DEFAULT_NAME, **kw):
        self.name, self.kw = name, kw

    def __enter__(self) -> EmulatedPi:
        return start_pi(self.name, **self.kw)

    def __exit__(self, *exc):
        stop_pi(self.name)
