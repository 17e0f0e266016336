"""Make the native .pte runner available on a device before a bench (kit.devices.bench calls this).

`local`: the runner folder is copied into this host's agent home, <home>/native/<digest>/, by the
same rules as a push (a .part folder, every sha256 checked, the digest marker, one rename). SSH
devices: kit.devices.ssh.native. Any other device type may offer `ensure_native_runner(progress)`.
With pte_runtime "auto" a runner that cannot be built or pushed is not an error: the bench uses the
Python bindings and the measurement says why (raw["native_runner_skipped"]).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from device_agents.protocol import DIGEST_FILE, agent_home, digest_rows, sha256_file
from kit.errors import EdgeKitError, LinkLost
from kit.progress import ProgressFn, report

PTE_RUNTIMES = ("python", "native", "auto")


def _rows(folder: Path):
    from kit.native import runner_files

    files = runner_files(folder)
    return files, {rel: sha256_file(str(p)) for rel, p in files}


def ensure_local(progress: ProgressFn = None) -> str:
    """Install the host-arch runner into this host's agent home; its digest."""
    from kit.native import build_runner

    folder = build_runner(None, progress)
    files, shas = _rows(folder)
    digest = digest_rows((rel, shas[rel], p.stat().st_size) for rel, p in files)
    final = Path(agent_home()) / "native" / digest
    marker = final / DIGEST_FILE
    if marker.is_file() and marker.read_text().strip() == digest:
        return digest
    incoming = final.parent / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    part = incoming / f"{digest}.{secrets.token_hex(4)}.part"
    try:
        report(progress, "installing the native runner", 0, 1)
        for rel, p in files:
            (part / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, part / rel)
            if sha256_file(str(part / rel)) != shas[rel]:
                raise EdgeKitError(f"{part / rel}: copy differs from {p} (sha256); check the disk and retry")
        os.chmod(part / "edgekit-runner", 0o755)
        (part / DIGEST_FILE).write_text(digest + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(part, final)
        report(progress, "installing the native runner", 1, 1)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return digest


def ensure_runner(device, pte_runtime: str, progress: ProgressFn = None) -> tuple[str | None, str | None]:
    """(digest of the runner on the device, or None; why not, when auto fell back)."""
    from kit.devices.local import LocalDevice

    if pte_runtime not in PTE_RUNTIMES:
        raise EdgeKitError(f"pte_runtime {pte_runtime!r} must be one of {', '.join(PTE_RUNTIMES)}")
    if pte_runtime == "python":
        return None, None
    try:
        if hasattr(device, "ensure_native_runner"):
            return device.ensure_native_runner(progress), None
        if isinstance(device, LocalDevice):
            return ensure_local(progress), None
        if hasattr(device, "upload_tree"):
            from kit.devices.ssh.native import ensure_native_runner

            return ensure_native_runner(device, progress), None
        raise EdgeKitError(f"{device.name}: this device type cannot receive the native runner; use --pte-runtime python")
    except LinkLost:
        raise  # a dead link is not a reason to measure something else
    except EdgeKitError as e:
        if pte_runtime == "native":
            raise
        return None, str(e)
