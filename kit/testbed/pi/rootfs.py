"""The aarch64 root file system: debootstrap (foreign + second stage under qemu) + device wheels
from the host's pip, cached in <cache>/pi-rootfs/<recipe hash>/ and rebuilt only when the recipe
changes. The cache entry appears whole or not at all (built in <key>.partial, then renamed)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report
from kit.testbed.pi.binfmt import binfmt_release, binfmt_setup
from kit.testbed.pi.host import cache_dir, require_tools, run_tool
from kit.testbed.pi.state import running

# Bump when the build steps change in a way the recipe fields do not show.
BUILD_SCRIPT_VERSION = 1
SITE = "usr/local/lib/python3.11/dist-packages"  # on Debian's python3 sys.path without PYTHONPATH


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


def cached_rootfs() -> list[dict]:
    """Every complete cache entry (JSON-able), marking the one the default recipe uses."""
    out = []
    if cache_dir().exists():
        for d in sorted(cache_dir().iterdir()):
            meta = d / "build.json"
            if meta.exists():
                m = json.loads(meta.read_text())
                out.append({"key": d.name, "path": str(d / "rootfs"), "build_s": m["build_s"],
                            "built_at": m.get("built_at"), "runtimes": m.get("runtimes", {}),
                            "current": d.name == PiRecipe().key()})
    return out


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


def _chroot_in_namespace(root: Path, argv: list[str], what: str, timeout: float = 3600,
                         env: dict | None = None) -> subprocess.CompletedProcess:
    """Run argv chrooted in root with /proc mounted, inside a private mount namespace (no leaks)."""
    script = 'mount -t proc proc "$1/proc" && root="$1" && shift && exec chroot "$root" "$@"'
    return run_tool(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
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
    require_tools()
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
    run_tool(["debootstrap", "--arch=arm64", "--foreign", f"--variant={recipe.variant}",
              f"--include={','.join(recipe.packages)}", recipe.suite, str(root), recipe.mirror],
             "debootstrap first stage (needs the Debian mirror)")
    report(progress, "debootstrap second stage (aarch64 under qemu, ~6 min)", 1, 4)
    _chroot_in_namespace(root, ["/debootstrap/debootstrap", "--second-stage"], "debootstrap second stage")
    report(progress, "device wheels (pip, host side)", 2, 4)
    run_tool([sys.executable, "-m", "pip", "install", "--quiet", "--upgrade",
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
