"""The emulated Raspberry Pi runs .pte bundles with the aarch64 native runner (no torch, no
executorch on the device), on the board's own CPU model (Pi 5: qemu -cpu cortex-a76).

Run with `pytest -m arm tests/test_emulated_pi_native.py` (needs root, qemu-user-static,
debootstrap, openssh-server, g++-aarch64-linux-gnu; `edgekit emulate-pi build` caches the rootfs).
"""

from __future__ import annotations

import shutil

import pytest

pytestmark = [pytest.mark.arm, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def pi_pte_bundles(tiny_model, digits16, tmp_path_factory, pi_signing_keys):
    from kit.compress.quantize import Int8Static, quantize
    from kit.package import package

    out = tmp_path_factory.mktemp("pi-native-bundles")
    x = digits16.test.x[:1]
    q = quantize(tiny_model, Int8Static(per_channel=True, calib_batches=2), digits16.calib)
    return {"fp32": package(tiny_model, "executorch", out / "fp32", x, name="tiny-pi-native", key=pi_signing_keys[0]),
            "int8": package(q, "executorch", out / "int8", x, name="tiny-pi-native-int8", key=pi_signing_keys[0])}


@pytest.fixture(scope="module")
def pi_device(emulated_pi, pi_signing_keys):
    from kit.devices import SshDevice

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is not installed (Debian package g++-aarch64-linux-gnu)")
    with SshDevice(emulated_pi.entry(), trusted_keys=[pi_signing_keys[1]]) as dev:
        yield dev


def test_every_process_on_the_pi_emulates_the_boards_cpu(pi_device, emulated_pi):
    code, out, _ = pi_device.exec("printenv QEMU_CPU", 60)
    assert code == 0 and out.decode().strip() == "cortex-a76" == emulated_pi.cpu
    assert emulated_pi.entry().vars["qemu_cpu"] == "cortex-a76"


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_pte_bench_on_the_emulated_pi_with_the_native_runner(kind, pi_device, pi_pte_bundles, capsys):
    from kit.devices.bench import BenchOptions, bench

    m = bench(pi_device, pi_pte_bundles[kind], BenchOptions(runs=10, warmup=2, threads=2, deadline_s=600,
                                                          pte_runtime="native"))
    r = m.raw
    assert r["device"]["arch"] == "aarch64" and r["native_runner"]["arch"] == "aarch64"
    assert r["pte_runtime"] == "native" and m.reference_passed, r["reference_check"]
    assert r["runtime_threads"] == {"threadpool": 2} and m.runs == 10
    with capsys.disabled():  # the figures for the record (not asserted: emulated timing means little)
        print(f"\nemulated Pi 5 (cortex-a76) {kind}: p50 {m.p50_ms:.3f} ms, load {m.load_ms:.1f} ms, "
              f"peak RSS {m.peak_rss_mb:.1f} MB, max_abs_err {r['reference_check']['max_abs_err']:.3g}")


def test_a_pi4_board_runs_on_cortex_a72(emulated_pi, pi_device, pi_pte_bundles, pi_signing_keys, tmp_path):
    """A second device with board="pi4": its processes emulate the Pi 4's core; the int8 .pte still matches."""
    import os

    from kit.devices import SshDevice
    from kit.devices.bench import BenchOptions, bench
    from kit.testbed.pi import start_pi, stop_pi

    name = f"pi4-native-{os.getpid()}"
    pi = start_pi(name, board="pi4", inventory=tmp_path / "devices.yaml", trusted_keys=[pi_signing_keys[1]])
    try:
        assert pi.cpu == "cortex-a72"
        with SshDevice(pi.entry(), trusted_keys=[pi_signing_keys[1]]) as dev:
            assert dev.exec("printenv QEMU_CPU", 60)[1].decode().strip() == "cortex-a72"
            m = bench(dev, pi_pte_bundles["int8"], BenchOptions(runs=5, warmup=1, deadline_s=600, pte_runtime="native"))
        assert m.raw["native_runner"]["arch"] == "aarch64" and m.reference_passed, m.raw["reference_check"]
    finally:
        stop_pi(name)
