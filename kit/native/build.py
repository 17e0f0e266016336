"""Build the native .pte runner (device_agents/native/runner.cpp) for a device's architecture.

x86-64 is compiled with g++ against the executorch wheel installed here; aarch64 with Debian's
aarch64-linux-gnu-g++ against the manylinux_2_28_aarch64 wheel of the same executorch version,
fetched once with `pip download` and unpacked (only its lib/ and include/ are used). The output
folder holds `edgekit-runner` (rpath $ORIGIN/lib), `lib/` with the runtime libraries it links, and
`runner.json` (arch, executorch version, source hash). Builds are cached under the kit's cache
folder (kit.cache), keyed by arch + executorch version + the runner's source hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import device_agents.native as _native_src  # the runner's source travels with the agent package
from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

SOURCE_DIR = Path(_native_src.__file__).resolve().parent
RUNNER = "edgekit-runner"
LIBS = ("executorch", "executorch_backend_xnnpack", "executorch_kernels_optimized", "executorch_kernels_quantized",
        "executorch_threadpool", "executorch_etdump")
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
COMPILERS = {"x86_64": ("x86_64-linux-gnu-g++", "g++"), "aarch64": ("aarch64-linux-gnu-g++",)}
DEB_PACKAGES = {"x86_64": "g++", "aarch64": "g++-aarch64-linux-gnu"}
WHEEL_PLATFORMS = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64"}


def normalize_arch(arch: str | None) -> str:
    """'x86_64'/'amd64' -> x86_64, 'aarch64'/'arm64' -> aarch64 (what `uname -m` says on the device)."""
    a = ARCHES.get((arch or platform.machine()).lower())
    if a is None:
        raise EdgeKitError(f"the native runner is built for x86_64 and aarch64, not {arch!r}; use --pte-runtime python")
    return a


def executorch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:
        raise EdgeKitError("building the native runner needs the executorch wheel on this host: pip install executorch") from None


def source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(SOURCE_DIR.glob("*")):
        if p.suffix in (".cpp", ".h"):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def native_cache() -> Path:
    from kit.cache import cache_dir

    return cache_dir().parent / "native"


def compiler(arch: str) -> str:
    for name in COMPILERS[arch]:
        path = shutil.which(name)
        if path:
            return path
    raise EdgeKitError(f"the {arch} native runner needs {COMPILERS[arch][0]}, which is not installed; "
                       f"install the Debian package {DEB_PACKAGES[arch]} (apt-get install {DEB_PACKAGES[arch]}) "
                       f"or bench .pte bundles with --pte-runtime python")


def _installed_tree() -> Path:
    spec = importlib.util.find_spec("executorch")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "lib" / "libexecutorch.so").is_file() and (Path(loc) / "include").is_dir():
            return Path(loc)
    raise EdgeKitError("the installed executorch wheel has no lib/libexecutorch.so + include/; "
                       "reinstall it (pip install --force-reinstall executorch)")


def _fetch_tree(arch: str, version: str, progress: ProgressFn) -> Path:
    """lib/ and include/ of the executorch wheel for `arch` (pip download, unpacked once, cached)."""
    from kit.cache import cached

    def produce(tmp: Path) -> None:
        plat = WHEEL_PLATFORMS[arch]
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        report(progress, f"downloading the executorch {version} wheel for {plat}", 0, 1)
        dl = tmp / "download"
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--platform", plat,
               "--python-version", py, "--dest", str(dl), f"executorch=={version}"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = sorted(dl.glob("executorch-*.whl")) if dl.is_dir() else []
        if p.returncode != 0 or not wheels:
            tail = (p.stderr.strip().splitlines() or ["no wheel"])[-1][:200]
            raise EdgeKitError(f"pip download of executorch=={version} for {plat} (Python {py}) failed: {tail}; "
                               f"check that pip reaches PyPI")
        with zipfile.ZipFile(wheels[0]) as z:
            for info in z.infolist():
                n = info.filename
                if not (n.startswith("executorch/lib/") or n.startswith("executorch/include/")) or info.is_dir():
                    continue
                if ".." in Path(n).parts or n.startswith("/"):
                    raise EdgeKitError(f"{wheels[0].name}: refusing member {n!r} (path escapes the folder)")
                z.extract(info, tmp / "tree")
        shutil.rmtree(dl)
        report(progress, f"downloading the executorch {version} wheel for {plat}", 1, 1)

    key = hashlib.sha256(f"wheel-tree\0{arch}\0{version}".encode()).hexdigest()
    folder, _ = cached(key, produce, root=native_cache() / "wheels")
    return folder / "tree" / "executorch"


def executorch_tree(arch: str, version: str | None = None, progress: ProgressFn = None) -> Path:
    """The folder with lib/ and include/ of executorch for `arch`."""
    arch = normalize_arch(arch)
    version = version or executorch_version()
    if arch == normalize_arch(None) and version == executorch_version():
        return _installed_tree()
    return _fetch_tree(arch, version, progress)


def compile_command(cxx: str, tree: Path, out: Path) -> list[str]:
    inc = tree / "include"
    return [cxx, "-std=c++17", "-O2", "-Wno-deprecated-declarations", f"-I{inc}",
            f"-I{inc}/executorch/runtime/core/portable_type/c10", "-DC10_USING_CUSTOM_GENERATED_MACROS",
            str(SOURCE_DIR / "runner.cpp"), "-o", str(out), f"-L{tree / 'lib'}", "-Wl,--no-as-needed",
            *[f"-l{lib}" for lib in LIBS], "-Wl,-rpath,$ORIGIN/lib"]


def build_runner(arch: str | None = None, progress: ProgressFn = None) -> Path:
    """The runner folder for `arch` (default: this host's): built once, then served from the cache."""
    from kit.cache import cached

    arch = normalize_arch(arch)
    version = executorch_version()
    src = source_hash()
    key = hashlib.sha256(json.dumps({"arch": arch, "executorch": version, "source": src}).encode()).hexdigest()
    root = native_cache() / "runners"
    from kit.cache import lookup

    hit = lookup(key, root)
    if hit is not None:
        return hit
    cxx = compiler(arch)  # before any download: one clear line when the compiler is missing
    tree = executorch_tree(arch, version, progress)

    def produce(tmp: Path) -> None:
        report(progress, f"compiling the native runner for {arch}", 0, 1)
        cmd = compile_command(cxx, tree, tmp / RUNNER)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            errs = [ln for ln in p.stderr.splitlines() if "error" in ln] or p.stderr.strip().splitlines() or ["?"]
            raise EdgeKitError(f"compiling the native runner for {arch} with {Path(cxx).name} failed: {errs[0][:300]}")
        (tmp / "lib").mkdir()
        for lib in LIBS:
            shutil.copyfile(tree / "lib" / f"lib{lib}.so", tmp / "lib" / f"lib{lib}.so")
        os.chmod(tmp / RUNNER, 0o755)
        (tmp / "runner.json").write_text(json.dumps({"arch": arch, "executorch": version, "source_sha256": src,
                                                     "compiler": Path(cxx).name}, indent=2) + "\n")
        report(progress, f"compiling the native runner for {arch}", 1, 1)

    folder, _ = cached(key, produce, root=root)
    return folder


def runner_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of what goes to a device: runner, libs, runner.json (not the cache marker)."""
    files = [(RUNNER, folder / RUNNER), ("runner.json", folder / "runner.json")]
    files += [(f"lib/{p.name}", p) for p in sorted((folder / "lib").glob("*.so"))]
    return files


def install_size(folder: Path) -> int:
    return sum(p.stat().st_size for _, p in runner_files(folder))
