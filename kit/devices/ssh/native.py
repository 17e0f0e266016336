"""Push the native .pte runner (kit.native) to an SSH device, once per device and runner build.

It goes where the agent looks for it, <home>/native/<digest>/, through SshDevice.upload_tree: a
content-addressed folder, sent to a .part name, sha256-checked on the device, renamed into place
with the digest marker written last (what the agent checks before it runs the runner). Behind the
forced-command agent there is no SFTP, so no runner: such a device benches .pte with the bindings.
"""

from __future__ import annotations

import posixpath

from kit.errors import DeviceError, EdgeKitError
from kit.progress import ProgressFn


def device_arch(dev) -> str:
    """`uname -m` on the device."""
    code, out, err = dev.exec("uname -m", dev.deadlines.command_s)
    arch = out.decode(errors="replace").strip()
    if code != 0 or not arch:
        raise DeviceError(dev.name, f"cannot tell the CPU architecture (uname -m exited {code}: "
                                    f"{err.decode(errors='replace').strip()[:120]}); bench .pte with --pte-runtime python")
    return arch


def ensure_native_runner(dev, progress: ProgressFn = None) -> str:
    """Build (cached) and push the runner for the device's architecture; its digest on the device."""
    from kit.devices.ssh.files import local_tree, tree_digest
    from kit.native import build_runner

    cached = getattr(dev, "_edgekit_native_digest", None)
    if cached:
        return cached
    if dev.entry.forced_command:
        raise EdgeKitError(f"{dev.name} is behind the forced-command agent (no SFTP): the native runner cannot be "
                           f"pushed with this key; bench .pte with --pte-runtime python")
    folder = build_runner(device_arch(dev), progress)
    files = [(rel, p) for rel, p in local_tree(folder) if rel != ".complete"]
    digest, _ = tree_digest(files)
    final = posixpath.join(dev.home, "native", digest)
    dev.upload_tree(files, final, f"native runner {digest[:12]}", progress)
    # SFTP creates files 0644 whatever the source mode: the runner must be executable.
    dev.sftp().chmod(posixpath.join(final, "edgekit-runner"), 0o755)
    dev._edgekit_native_digest = digest
    return digest
