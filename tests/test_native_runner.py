"""The native .pte runner (device_agents/native/runner.cpp, built by kit.native): on `local`, over a
real sshd device, with hostile models, many inputs and dtypes, and its aarch64 build under
qemu-user with the Pi 4 / Pi 5 CPU models (no root file system) against the host's outputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from kit.devices.bench import BenchOptions, bench
from kit.devices.local import LocalDevice
from kit.errors import AgentRefused

QEMU = "qemu-aarch64-static"
CROSS_SYSROOT = Path("/usr/aarch64-linux-gnu")


@pytest.fixture(scope="module")
def runner_dir() -> Path:
    from kit.native import build_runner

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (Debian package g++; .ci/testbed-deps installs it)")
    return build_runner()


@pytest.fixture(scope="module")
def bundles(tiny_model, digits16, tmp_path_factory):
    """fp32 and int8 (PT2E, XNNPACK) .pte bundles of the trained TinyNet, signed with the session key."""
    from kit.compress.quantize import Int8Static, quantize
    from kit.package import package

    out = tmp_path_factory.mktemp("native-bundles")
    x = digits16.test.x[:1]
    q = quantize(tiny_model, Int8Static(per_channel=True, calib_batches=2), digits16.calib)
    return {"fp32": package(tiny_model, "executorch", out / "fp32", x, name="tiny-native"),
            "int8": package(q, "executorch", out / "int8", x, name="tiny-native-int8")}


def run_runner(runner: Path, model: Path, inputs: list[Path], out_dir: Path, *extra: str, prefix=()) -> dict:
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*prefix, str(runner / "edgekit-runner"), "--model", str(model), "--sha256", sha, "--out-dir", str(out_dir),
           "--runs", "3", "--warmup", "1", *sum([["--input", str(p)] for p in inputs], []), *extra]
    p = subprocess.run(cmd, capture_output=True, timeout=300)
    lines = p.stdout.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1, (p.returncode, p.stdout[-500:], p.stderr[-500:])  # ONE document, never a crash dump
    doc = json.loads(lines[0])
    assert (p.returncode == 0) == doc["ok"]
    return doc


# --- local -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_local_native_bench_passes_the_reference_check_without_torch(kind, bundles, runner_dir):
    b = bundles[kind]
    m = bench(LocalDevice(), b, BenchOptions(runs=10, warmup=2, threads=2, pte_runtime="native"))
    r = m.raw
    assert r["pte_runtime"] == "native" and m.runtime == "executorch" and m.reference_passed
    assert r["reference_check"]["top1_match"] and r["reference_check"]["max_abs_err"] <= r["reference_check"]["atol"]
    assert r["runtime_threads"] == {"threadpool": 2} and m.threads == 2  # threads honoured, reported
    assert m.runs == len(r["samples_ms"]) == 10 and 0 < m.p50_ms and m.load_ms > 0 and m.first_inference_ms > 0
    # No torch in the process: the Python child's import alone maps ~3.5 GB and ~700 MB RSS.
    assert r["limits"]["runtime_address_space_mb"] < 500 and m.peak_rss_mb < 200
    assert r["native_runner"]["arch"] == "x86_64" or r["native_runner"]["arch"] == "aarch64"
    one = bench(LocalDevice(), b, BenchOptions(runs=3, threads=1, pte_runtime="native")).raw
    assert one["runtime_threads"] == {"threadpool": 1} and one["process_threads"] < r["process_threads"]


def test_python_and_auto_choose_as_asked(bundles, runner_dir):
    b = bundles["fp32"]
    py = bench(LocalDevice(), b, BenchOptions(runs=3, pte_runtime="python")).raw
    auto = bench(LocalDevice(), b, BenchOptions(runs=3, pte_runtime="auto")).raw
    assert py["pte_runtime"] == "python" and "native_runner" not in py
    assert auto["pte_runtime"] == "native" and auto["reference_check"]["passed"] and py["reference_check"]["passed"]


def test_agent_refuses_a_bad_choice_and_a_missing_runner(bundles):
    doc = LocalDevice().run_agent(["bench", "--bundle", str(bundles["fp32"].path), "--opts",
                                   json.dumps({"runs": 2, "pte_runtime": "rust"})])
    assert doc["error"]["code"] == "bad_option" and "pte_runtime" in doc["error"]["message"]
    doc = LocalDevice().run_agent(["bench", "--bundle", str(bundles["fp32"].path), "--opts",
                                   json.dumps({"runs": 2, "pte_runtime": "native", "native_runner": "ab" * 32})])
    assert doc["error"]["code"] == "runtime_missing" and "pte_runtime python" in doc["error"]["message"]


def test_many_inputs_of_every_dtype_and_checked_against_method_meta(runner_dir, tmp_path):
    from kit.package.executorch import export_pte

    class Six(torch.nn.Module):
        def forward(self, a, b, c, d, e, f):
            s = sum(t.to(torch.float32).sum() for t in (b, c, d, e, f))
            return a * 2 + s, (b + 1) * c.to(torch.int64)

    ins = [np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int64),
           np.arange(4, dtype=np.int32) - 2, np.array([0, 7, 255], np.uint8), np.array([-128, 5], np.int8),
           np.array([True, False, True])]
    export_pte(Six(), tuple(torch.from_numpy(x) for x in ins), tmp_path / "six.pte")
    files = []
    for i, x in enumerate(ins):
        np.save(tmp_path / f"in{i}.npy", x)
        files.append(tmp_path / f"in{i}.npy")
    doc = run_runner(runner_dir, tmp_path / "six.pte", files, tmp_path / "out")
    assert doc["ok"], doc
    want = [t.numpy() for t in Six()(*[torch.from_numpy(x) for x in ins])]
    got = [np.load(tmp_path / "out" / f"output_{i}.npy") for i in range(2)]
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_array_equal(got[1], want[1])

    doc = run_runner(runner_dir, tmp_path / "six.pte", files[:5], tmp_path / "out")
    assert doc["error"] == {"code": "bad_input", "message": "the model's forward takes 6 input(s), got 5 .npy file(s)"}
    doc = run_runner(runner_dir, tmp_path / "six.pte", [files[1], *files[1:]], tmp_path / "out")
    assert doc["error"]["code"] == "bad_input" and "in1.npy) is int64 but forward takes float32 [2,3]" in doc["error"]["message"]
    np.save(tmp_path / "wide.npy", np.zeros((2, 4), np.float32))
    doc = run_runner(runner_dir, tmp_path / "six.pte", [tmp_path / "wide.npy", *files[1:]], tmp_path / "out")
    assert "has shape [2,4] but forward takes [2,3]" in doc["error"]["message"]
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f4', 'shape': (9,)}")
    doc = run_runner(runner_dir, tmp_path / "six.pte", [tmp_path / "bad.npy", *files[1:]], tmp_path / "out")
    assert doc["error"]["code"] == "bad_input" and "bad.npy" in doc["error"]["message"]


def test_the_runner_rehashes_the_model_it_parses(runner_dir, bundles, tmp_path):
    b = bundles["fp32"]
    model, x = b.model_file, b.path / "reference_input.npy"
    good = run_runner(runner_dir, model, [x], tmp_path / "o")  # its own SHA-256 agrees with hashlib's
    assert good["ok"] and good["result"]["reference_check"]["passed"] is None
    sha = hashlib.sha256(model.read_bytes() + b"x").hexdigest()
    p = subprocess.run([str(runner_dir / "edgekit-runner"), "--model", str(model), "--sha256", sha, "--input", str(x),
                        "--out-dir", str(tmp_path)], capture_output=True)
    assert json.loads(p.stdout)["error"]["code"] == "hash_mismatch"


def _huge_allocation(pte: bytes) -> bytes:
    """The same program, asking for a 1 TiB memory-planned buffer (a hostile file's cheapest attack)."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    p = deserialize_pte_binary(pte)
    p.program.execution_plan[0].non_const_buffer_sizes[-1] = 1 << 40
    return bytes(serialize_pte_binary(p, extract_delegate_segments=True))


@pytest.mark.parametrize("attack,codes", [("truncated", {"load_failed"}), ("garbage", {"load_failed"}),
                                          ("huge_allocation", {"resource_limit"})])
def test_hostile_pte_gives_a_clean_error_result(attack, codes, bundles, runner_dir, tmp_path):
    from kit.package.bundle import write_bundle

    b = bundles["fp32"]
    data = b.model_file.read_bytes()
    bad = {"truncated": lambda: data[: len(data) // 2],
           "garbage": lambda: data[:8] + np.random.default_rng(0).bytes(len(data) - 8),
           "huge_allocation": lambda: _huge_allocation(data)}[attack]()
    (tmp_path / "model.pte").write_bytes(bad)
    x, y = np.load(b.path / "reference_input.npy"), np.load(b.path / "reference_output.npy")
    hostile = write_bundle(tmp_path / "bundle", tmp_path / "model.pte", f"hostile-{attack}", x, y)
    with pytest.raises(AgentRefused) as e:
        bench(LocalDevice(), hostile, BenchOptions(runs=2, pte_runtime="native", max_memory_mb=256))
    assert e.value.code in codes, e.value
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_a_missing_compiler_is_one_line_naming_the_debian_package(monkeypatch, tmp_path):
    from kit.errors import EdgeKitError
    from kit.native.build import compiler

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no compiler on it
    for arch, pkg in (("aarch64", "g++-aarch64-linux-gnu"), ("x86_64", "g++")):
        with pytest.raises(EdgeKitError) as e:
            compiler(arch)
        assert f"install the Debian package {pkg} " in str(e.value) and "\n" not in str(e.value)


def test_the_sandbox_deadline_and_cpu_limit_hold_for_the_native_runner(runner_dir, tmp_path):
    from kit.package import package

    torch.manual_seed(0)  # ~4M MACs a run: the 100000-run cap takes far longer than the limits below
    mlp = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(4)]).eval()
    b = package(mlp, "executorch", tmp_path / "mlp", np.zeros((1, 1024), np.float32), name="mlp")
    with pytest.raises(AgentRefused) as e:  # keeps timing for 60 s, allowed 2 s of wall clock
        bench(LocalDevice(), b, BenchOptions(runs=2, min_time_s=60, deadline_s=2, pte_runtime="native"))
    assert e.value.code == "deadline"
    with pytest.raises(AgentRefused) as e:  # allowed 1 CPU second
        bench(LocalDevice(), b, BenchOptions(runs=2, min_time_s=60, deadline_s=30, max_cpu_s=1, pte_runtime="native"))
    assert e.value.code == "resource_limit" and "max_cpu_s" in str(e.value)


# --- over a real sshd device ---------------------------------------------------------------------

def test_native_bench_over_sshd_pushes_the_runner_once(bundles, runner_dir, sshd_device):
    from device_agents.protocol import DIGEST_FILE
    from kit.devices.ssh import Deadlines, SshDevice

    fast = Deadlines(connect_s=10, command_s=30, io_idle_s=10, transfer_s=60)
    with SshDevice(sshd_device, deadlines=fast) as dev:
        results = {k: bench(dev, b, BenchOptions(runs=5, threads=2, pte_runtime="native")) for k, b in bundles.items()}
    digest = results["fp32"].raw["native_runner"]["digest"]
    folder = Path(sshd_device.home) / "native" / digest
    assert (folder / DIGEST_FILE).read_text().strip() == digest and (folder / "lib" / "libexecutorch.so").is_file()
    marker_mtime = (folder / DIGEST_FILE).stat().st_mtime_ns
    for m in results.values():
        assert m.raw["pte_runtime"] == "native" and m.reference_passed and m.raw["runtime_threads"] == {"threadpool": 2}
    with SshDevice(sshd_device, deadlines=fast) as dev:  # a new connection: found on the device, not re-sent
        again = bench(dev, bundles["int8"], BenchOptions(runs=3, pte_runtime="auto"))
    assert again.raw["pte_runtime"] == "native" and (folder / DIGEST_FILE).stat().st_mtime_ns == marker_mtime
    assert sorted(p.name for p in (folder.parent).iterdir() if p.name != ".incoming") == [digest]


# --- aarch64 under qemu-user, Pi 4 and Pi 5 CPU models ------------------------------------------

def _arm_missing() -> str | None:
    if shutil.which("aarch64-linux-gnu-g++") is None:
        return "aarch64-linux-gnu-g++ is not installed (Debian package g++-aarch64-linux-gnu)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-user-static)"
    if not (CROSS_SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists():
        return f"{CROSS_SYSROOT}/lib/ld-linux-aarch64.so.1 is missing (Debian package libc6-arm64-cross)"
    return None


@pytest.fixture(scope="module")
def arm_runner() -> Path:
    from kit.native import build_runner

    reason = _arm_missing()
    if reason:
        pytest.skip(reason)
    return build_runner("aarch64")


@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])  # Raspberry Pi 4, Raspberry Pi 5
def test_aarch64_runner_under_qemu_matches_the_host(cpu, arm_runner, runner_dir, bundles, tmp_path):
    assert json.loads((arm_runner / "runner.json").read_text())["arch"] == "aarch64"
    for kind, b in bundles.items():
        ref = b.manifest["reference"]
        args = ["--reference-output", str(b.path / ref["output"]), "--atol", repr(ref["atol"]), "--rtol", repr(ref["rtol"]),
                "--threads", "2"]
        x = [b.path / ref["input"]]
        host = run_runner(runner_dir, b.model_file, x, tmp_path / kind / "host", *args)
        arm = run_runner(arm_runner, b.model_file, x, tmp_path / kind / "arm", *args,
                         prefix=(QEMU, "-cpu", cpu, "-L", str(CROSS_SYSROOT)))
        assert host["ok"] and arm["ok"], (host, arm)
        assert arm["result"]["reference_check"]["passed"], (kind, arm["result"]["reference_check"])
        a, h = (np.load(tmp_path / kind / w / "output_0.npy") for w in ("arm", "host"))
        np.testing.assert_allclose(a, h, atol=ref["atol"], rtol=ref["rtol"])
        assert int(np.argmax(a)) == int(np.argmax(h))
