"""Pushes that go wrong half-way: a killed sshd, a frozen device, a full disk. Each test has its own sshd."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from kit.errors import DeviceError, EdgeKitError, LinkLost
from device_agents.protocol import DIGEST_FILE
from kit.devices.ssh import Deadlines, SshDevice

# Small budgets so a stuck push fails in seconds; a healthy 12 MB push over loopback takes ~0.2 s.
TIGHT = Deadlines(connect_s=5, command_s=15, io_idle_s=3, transfer_s=8, min_rate_bps=50e6)


def make_bundle(root: Path, bundle_id: str, size: int) -> Path:
    """A bundle-shaped folder with a random payload: the transport never parses the model."""
    root.mkdir(parents=True)
    (root / "model.pte").write_bytes(os.urandom(size))
    (root / "manifest.json").write_text(json.dumps({"schema_version": 1, "bundle_id": bundle_id, "name": "payload"}))
    return root


def incoming(home: Path) -> list[str]:
    d = home / "bundles" / ".incoming"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def assert_installed(home: Path, bundle: Path, bundle_id: str) -> None:
    final = home / "bundles" / bundle_id
    assert (final / "model.pte").read_bytes() == (bundle / "model.pte").read_bytes()
    assert (final / DIGEST_FILE).is_file()
    assert incoming(home) == []


def test_sshd_killed_mid_push_leaves_nothing_active_and_next_push_succeeds(sshd_factory, tmp_path):
    entry, = sshd_factory(1)
    server = sshd_factory.server(entry)
    bundle = make_bundle(tmp_path / "b", "killed1", 12 << 20)
    home = Path(entry.home)
    killed = []

    def cut_power(label, done, total):
        if label.startswith("bundle") and done > (2 << 20) and not killed:
            server.kill()
            killed.append(done)

    dev = SshDevice(entry, deadlines=TIGHT)
    try:
        with pytest.raises(EdgeKitError, match="connection dropped|stalled|did not finish") as e:
            dev.stage_bundle(bundle, progress=cut_power)
        assert "killed1" in str(e.value) or entry.name in str(e.value)
        assert isinstance(e.value, LinkLost) and e.value.retryable
    finally:
        dev.close()
    assert killed
    assert not (home / "bundles" / "killed1").exists()  # nothing usable-looking where the agent looks
    assert all(name.endswith(".part") for name in incoming(home))

    server.start()  # the device comes back on the same port with the same host key
    with SshDevice(entry, deadlines=TIGHT) as dev:
        assert dev.stage_bundle(bundle) == f"{home}/bundles/killed1"
    assert_installed(home, bundle, "killed1")  # the stale .part was cleared, the copy is whole


def test_frozen_device_mid_push_fails_within_deadline(sshd_factory, tmp_path):
    entry, = sshd_factory(1)
    server = sshd_factory.server(entry)
    bundle = make_bundle(tmp_path / "b", "frozen1", 24 << 20)
    frozen: list[int] = []

    def freeze(label, done, total):
        if label.startswith("bundle") and done > (1 << 20) and not frozen:
            frozen.extend(server.freeze())

    dev = SshDevice(entry, deadlines=TIGHT)
    try:
        dev.ensure_agent()
        t0 = time.monotonic()
        with pytest.raises(EdgeKitError, match="stalled|did not finish") as e:
            dev.stage_bundle(bundle, progress=freeze)
        assert isinstance(e.value, LinkLost)
        elapsed = time.monotonic() - t0
    finally:
        server.thaw()
        dev.close()
    assert frozen, "the session processes were not found under the listening sshd"
    budget = TIGHT.transfer(24 << 20)
    assert elapsed < budget + 5, f"the push hung {elapsed:.1f} s (deadline {budget:.1f} s)"
    assert not (Path(entry.home) / "bundles" / "frozen1").exists()


@pytest.fixture
def tmpfs_home(tmp_path):
    """An 8 MB tmpfs as the device's agent home (root only)."""
    home = tmp_path / "tmpfs-home"
    home.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(home)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs (mount said: {r.stderr.strip()})")
    try:
        yield home
    finally:
        if subprocess.run(["umount", str(home)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(home)], capture_output=True)


def test_disk_full_refused_before_sending(sshd_factory, tmp_path, tmpfs_home):
    entry, = sshd_factory(1, home=str(tmpfs_home))
    bundle = make_bundle(tmp_path / "b", "toobig", 12 << 20)
    events = []
    with SshDevice(entry, deadlines=TIGHT) as dev:
        dev.ensure_agent()
        with pytest.raises(EdgeKitError, match=r"MB free but bundle toobig needs") as e:
            dev.stage_bundle(bundle, progress=lambda *a: events.append(a))
    assert str(tmpfs_home) in str(e.value)
    assert isinstance(e.value, DeviceError) and not e.value.retryable  # a full disk stays full
    assert events == []  # refused before a byte was sent
    assert incoming(tmpfs_home) == [] and not (tmpfs_home / "bundles" / "toobig").exists()


def test_disk_filling_during_push_leaves_no_part(sshd_factory, tmp_path, tmpfs_home):
    entry, = sshd_factory(1, home=str(tmpfs_home))
    bundle = make_bundle(tmp_path / "b", "squeezed", 5 << 20)
    filler = tmpfs_home / "filler"

    def fill_disk(label, done, total):
        # Something else on the device eats the space after the free-space check passed.
        if label.startswith("bundle") and done > 0 and not filler.exists():
            st = os.statvfs(tmpfs_home)
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - (64 << 10)))

    with SshDevice(entry, deadlines=TIGHT) as dev:
        with pytest.raises(EdgeKitError, match="out of space") as e:
            dev.stage_bundle(bundle, progress=fill_disk)
        assert isinstance(e.value, DeviceError) and not e.value.retryable and entry.name in str(e.value)
        assert filler.exists()
        assert incoming(tmpfs_home) == []  # the partial upload was removed, not left as a .part
        assert not (tmpfs_home / "bundles" / "squeezed").exists()
        filler.unlink()
        dev.stage_bundle(bundle)  # with the space back, the same push goes through
    assert_installed(tmpfs_home, bundle, "squeezed")


def test_frozen_device_agent_call_fails_within_deadline(sshd_factory):
    entry, = sshd_factory(1)
    server = sshd_factory.server(entry)
    dev = SshDevice(entry, deadlines=TIGHT)
    try:
        assert dev.exec("echo up", 10)[1] == b"up\n"
        assert server.freeze()  # the connection's session processes, as a hung kernel would leave them
        t0 = time.monotonic()
        with pytest.raises(EdgeKitError, match="stalled|did not finish|cannot connect") as e:
            dev.run_agent(["info"], timeout=2)
        assert isinstance(e.value, LinkLost)
        elapsed = time.monotonic() - t0
    finally:
        server.thaw()
        dev.close()
    assert elapsed < 2 + TIGHT.connect_s + 5, f"the agent call hung {elapsed:.1f} s"
