"""The emulated Raspberry Pi: deploy over SSH to aarch64 code under qemu and check it end to end.

Run with `pytest -m arm tests/test_emulated_pi.py` (needs root, qemu-user-static, debootstrap,
openssh-server; the root file system is cached, `edgekit emulate-pi build` makes it ahead).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kit.errors import EdgeKitError

pytestmark = [pytest.mark.arm, pytest.mark.timeout(1800)]  # a cold rootfs build alone takes ~10 min


@pytest.fixture(scope="module")
def signed_bundles(tiny_model, digits16, tmp_path_factory, pi_signing_keys):
    from kit.package import package

    out = tmp_path_factory.mktemp("pi-bundles")
    x = digits16.test.x[:1]
    return {fmt: package(tiny_model, fmt, out / fmt, x, name="tiny-pi", key=pi_signing_keys[0])
            for fmt in ("onnx", "executorch")}


@pytest.fixture(scope="module")
def pi_device(emulated_pi, pi_signing_keys):
    from kit.devices import SshDevice

    with SshDevice(emulated_pi.entry(), trusted_keys=[pi_signing_keys[1]]) as dev:
        yield dev


def test_the_device_is_registered_as_emulated(emulated_pi):
    from kit.devices.inventory import Inventory

    entry = Inventory.load(emulated_pi.inventory).get(emulated_pi.name)
    assert entry.emulated is True
    assert (entry.host, entry.port, entry.user) == ("127.0.0.1", emulated_pi.port, "root")
    assert Path(entry.known_hosts).read_text().startswith(f"[127.0.0.1]:{emulated_pi.port} ssh-ed25519 ")


def test_agent_info_reports_aarch64(pi_device):
    doc = pi_device.run_agent(["info"], timeout=300)
    assert doc["ok"], doc
    info = doc["result"]
    assert info["arch"] == "aarch64"
    assert info["runtimes"]["onnxruntime"] == "1.32.0"
    assert pi_device.emulated is True


def test_onnx_bundle_bench_on_aarch64_passes_the_reference_check(pi_device, signed_bundles, pi_signing_keys, tmp_path):
    from kit.devices.bench import BenchOptions, bench
    from kit.package.signing import key_id
    from kit.results.store import ResultsStore

    bundle = signed_bundles["onnx"]
    m = bench(pi_device, bundle, BenchOptions(runs=10, warmup=2, deadline_s=300))
    assert m.raw["device"]["arch"] == "aarch64"  # measured by aarch64 code, not the host's
    assert m.runtime == "onnxruntime"
    assert m.reference_passed is True and m.raw["reference_check"]["passed"] is True
    # the aarch64 agent checked the hashes and our signature (it reports the signer's key id)
    assert m.raw["verified"] == {"hashes": True, "signature": key_id(pi_signing_keys[0])}
    assert m.runs == 10 and 0 < m.p50_ms <= m.p99_ms

    info = pi_device.run_agent(["info"], timeout=300)["result"]
    with ResultsStore(tmp_path / "results.db") as store:
        run = store.start_run("bench", note="emulated pi")
        store.record(run, bundle, m, "onnx", device_info=info, emulated=pi_device.emulated)
        devices = {d["name"]: d for d in store.devices()}
    assert bool(devices[pi_device.name]["emulated"]) is True


def test_pte_bundle_says_what_the_device_lacks(pi_device, signed_bundles):
    """Without the native runner (pte_runtime="python"): no ExecuTorch pybindings on the emulated Pi
    (its aarch64 pybindings link PyPI's CUDA build of libtorch)."""
    from kit.devices.bench import BenchOptions, bench

    with pytest.raises(EdgeKitError, match=r"runtime_missing.*executorch"):
        bench(pi_device, signed_bundles["executorch"], BenchOptions(runs=2, warmup=0, deadline_s=300, pte_runtime="python"))


def test_a_tampered_bundle_is_refused_on_aarch64(pi_device, signed_bundles, tmp_path):
    import shutil

    from kit.devices.bench import BenchOptions, bench
    from kit.package.bundle import Bundle

    src = signed_bundles["onnx"].path
    bad = tmp_path / "tampered"
    shutil.copytree(src, bad)
    model = next(p for p in bad.iterdir() if p.suffix == ".onnx")
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(EdgeKitError, match="bench of tampered failed"):
        bench(pi_device, Bundle.load(bad), BenchOptions(runs=2, warmup=0, deadline_s=300))


def test_rootfs_is_cached_by_recipe(emulated_pi):
    from kit.testbed.pi import PiRecipe, build_rootfs

    info = build_rootfs()
    assert info.built is False and info.key == emulated_pi.rootfs_key == PiRecipe().key()
    assert (info.path / "usr/bin/python3").exists()
    assert PiRecipe(wheels=("onnxruntime==1.31.0",)).key() != info.key  # a changed recipe is a new build


def test_slow_profile_and_cleanup(emulated_pi, pi_signing_keys, tmp_path):
    """A second Pi with a quarter of a core: its processes sit in the quota cgroup; stop undoes everything."""
    from kit.testbed.pi import BINFMT_DIR, BINFMT_NAME, running, start_pi, stop_pi
    from kit.devices.inventory import Inventory
    from kit.devices import SshDevice

    name = f"pi-slow-{os.getpid()}"
    inventory = tmp_path / "devices.yaml"
    pi = start_pi(name, cpu_quota=0.25, inventory=inventory, trusted_keys=[pi_signing_keys[1]])
    try:
        cg = Path(pi.cgroup)
        quota = cg / "cpu.cfs_quota_us"
        assert (quota.read_text().strip() if quota.exists() else (cg / "cpu.max").read_text().split()[0]) == "25000"
        assert str(pi.pid) in (cg / "cgroup.procs").read_text().split()
        with SshDevice(pi.entry(), trusted_keys=[pi_signing_keys[1]]) as dev:
            assert dev.run_agent(["info"], timeout=600)["result"]["arch"] == "aarch64"
        # The quota bit: the agent's aarch64 python (a session under sshd) was throttled by it.
        stat = dict(line.split() for line in (cg / "cpu.stat").read_text().splitlines())
        assert int(stat.get("nr_throttled", 0)) > 0
        assert {p.name for p in running()} >= {name, emulated_pi.name}
    finally:
        assert stop_pi(name) is True
    assert not os.path.exists(f"/proc/{pi.pid}")
    assert not cg.exists() and not Path(pi.run_dir).exists()
    assert name not in Inventory.load(inventory).devices
    assert pi.run_dir not in Path("/proc/self/mountinfo").read_text()
    # The other Pi still runs, so the shared binfmt handler must still be there.
    assert (BINFMT_DIR / BINFMT_NAME).exists()
    assert stop_pi(name) is False  # stopping twice is harmless


def test_bad_name_is_refused_before_anything_starts():
    from kit.testbed.pi import start_pi

    with pytest.raises(EdgeKitError, match="device name"):
        start_pi("bad name!")


def test_cli_status_lists_the_running_pi(emulated_pi, capsys):
    from kit.cli import main

    assert main(["emulate-pi", "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert emulated_pi.name in {r["name"] for r in st["running"]}
    assert any(r["key"] == emulated_pi.rootfs_key and r["current"] for r in st["rootfs"])
