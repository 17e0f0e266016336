"""The emulated Raspberry Pi (aarch64 Debian under qemu-user, its own sshd) for tests marked `arm`.

API (other areas may use it in tests marked @pytest.mark.arm):

    pi_signing_keys   session-scoped (private, public) signing key pair in a temporary folder
    emulated_pi       session-scoped kit.testbed.pi.EmulatedPi, started once, stopped by PID at the
                      end; .entry() is its DeviceEntry (emulated=True, its own known_hosts), its agent
                      trusts pi_signing_keys' public key. The device name is unique per test session.

The root file system comes from the shared cache ($EDGEKIT_CACHE or ~/.cache/edgekit): build it
ahead with `edgekit emulate-pi build` (~10 min cold); a missing cache is built on first use.
Skips (with the reason printed) when the machine lacks root, qemu-user-static, debootstrap or sshd.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit.errors import EdgeKitError


def emulated_pi_missing() -> str | None:
    """Why the emulated Pi cannot run here (missing privilege or packages), or None."""
    from kit.testbed.pi.host import require_tools

    try:
        require_tools()
    except EdgeKitError as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def pi_signing_keys(tmp_path_factory) -> tuple[Path, Path]:
    from kit.package.signing import init_keys

    kp = init_keys(tmp_path_factory.mktemp("pi-keys") / "signing.ed25519")
    return kp.private, kp.public


@pytest.fixture(scope="session")
def emulated_pi(tmp_path_factory, pi_signing_keys):
    reason = emulated_pi_missing()
    if reason:
        print(f"SKIP emulated Pi: {reason}")
        pytest.skip(f"emulated Pi: {reason}")
    from kit.testbed.pi import BINFMT_DIR, BINFMT_NAME, running, start_pi, stop_pi

    handler_before = (BINFMT_DIR / BINFMT_NAME).exists()
    name = f"pi-test-{os.getpid()}"
    inventory = tmp_path_factory.mktemp("pi-inventory") / "devices.yaml"
    pi = start_pi(name, inventory=inventory, trusted_keys=[pi_signing_keys[1]])
    try:
        yield pi
    finally:
        stop_pi(name)
    assert not os.path.exists(pi.run_dir), f"{pi.run_dir} left behind"
    if not handler_before and not running():  # the last Pi out must undo the binfmt registration
        assert not (BINFMT_DIR / BINFMT_NAME).exists(), "binfmt handler qemu-aarch64 left registered"
