"""`bench --profile` and the memory split (issue 16): real ExecuTorch (native runner and Python
bindings) and ONNX Runtime, on `local` and over a real sshd device; the per-operator table stored,
shown by `results show --ops`, lined up by `compare --ops` (int8 vs its fp32 twin) and charted in
the report (rendered in Chromium)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from kit.devices.bench import BenchOptions, bench
from kit.devices.local import LocalDevice
from kit.results.store import ResultsStore

ONNX_TYPES = {"Conv", "Add", "Clip", "GlobalAveragePool", "Gemm", "Flatten", "Relu"}


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory, edgekit_signing_key):
    """The demo's model shape (MobileNetV2 student, width 0.5, 1x32x32): fp32 .pte and .onnx, and an
    ORT int8 (QDQ, static) twin of the .onnx."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from kit.models import mobilenet_student
    from kit.package import package

    torch.manual_seed(0)
    model = mobilenet_student("mobilenet_v2", 0.5, 10, in_channels=1, stem_stride=1).eval()
    out = tmp_path_factory.mktemp("profiling")
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    pte = package(model, "executorch", out / "student-pte", x, name="student")
    onnx = package(model, "onnx", out / "student-onnx", x, name="student")

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.items = iter([{"input": rng.standard_normal((1, 1, 32, 32)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    import onnx as onnx_lib

    name = onnx_lib.load(str(onnx.model_file)).graph.input[0].name
    reader = Reader()
    reader.items = iter([{name: v["input"]} for v in reader.items])
    q_path = out / "student-int8.onnx"
    quantize_static(str(onnx.model_file), str(q_path), reader, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    int8 = package(q_path, "onnx", out / "student-int8-onnx", x, name="student",
                   tolerance={"atol": 10.0, "rtol": 1.0})
    return {"pte": pte, "onnx": onnx, "int8": int8}


def _check_rows(table: dict, types: set[str] | None = None):
    assert not table.get("error"), table.get("error")
    ops = [r for r in table["rows"] if r["level"] == "op"]
    assert ops and table["run_ms"] > 0
    for r in table["rows"]:
        assert r["calls"] > 0 and r["total_ms"] >= 0 and r["name"], r
    # XNNPACK times its operators in whole microseconds: sub-microsecond ones read 0 in some runs
    assert sum(r["total_ms"] > 0 for r in ops) >= 0.5 * len(ops) and sum(r["total_ms"] for r in ops) > 0
    if types is not None:
        assert {r["type"] for r in ops} & types, {r["type"] for r in ops}
    return ops


def _record(store_path, bundle, m, variant):
    with ResultsStore(store_path) as s:
        run = s.start_run("bench", "profiling test")
        return run, s.record(run, bundle, m, variant)


def test_local_profiles_memory_split_store_show_and_report(demo_like, tmp_path, capsys):
    from kit.cli import main
    from kit.profiles import etrecord_path

    pte, onnx = demo_like["pte"], demo_like["onnx"]
    assert etrecord_path(pte.path).is_file() and not etrecord_path(onnx.path).exists()
    mp = bench(LocalDevice(), pte, BenchOptions(runs=10, profile=True, profile_runs=5, pte_runtime="native"))
    mo = bench(LocalDevice(), onnx, BenchOptions(runs=10, profile=True, profile_runs=5))
    assert mp.raw["pte_runtime"] == "native" and mp.reference_passed and mo.reference_passed

    # .pte: the XNNPACK delegate block(s), XNNPACK's own operators inside, named through the ETRecord
    ops = _check_rows(mp.profile, {"Convolution"})
    blocks = [r for r in mp.profile["rows"] if r["level"] == "block"]
    assert blocks and all(r["block"] == "XnnpackBackend" and r["total_ms"] > 0 and r["op_types"] for r in blocks)
    assert mp.profile["etrecord"] is True and "delegate block" in mp.profile["note"]
    assert any(r["block"] == "XnnpackBackend" for r in ops)
    # .onnx: the model's own operator types from ORT's trace
    _check_rows(mo.profile, ONNX_TYPES)
    assert "Conv" in {r["kind"] for r in mo.profile["rows"]}  # ORT fuses the residual Add into its Conv
    # the timed child ran without a profiler; the profiled runs came after, in their own process
    assert "etdump" not in mp.raw and mp.raw["profile"]["runs"] == 5 and mp.runs == 10

    # the memory split, and issue 16's bar: the model's own load cost <= 3x its file + 20 MB
    for m in (mp, mo):
        mem = m.memory
        for k in ("runtime_rss_mb", "model_load_mb", "inference_peak_rss_mb", "load_ms", "first_inference_ms"):
            assert mem[k] is not None and mem[k] >= 0, (k, mem)
    size_mb = pte.manifest["model"]["size"] / 2**20
    assert mp.memory["model_load_mb"] <= 3 * size_mb + 20, (mp.memory, size_mb)
    assert mp.memory["planned_mb"] > 0 and mo.memory["runtime_import_mb"] > 0

    db = tmp_path / "r.db"
    run_p, mid_p = _record(db, pte, mp, "student-pte")
    _record(db, onnx, mo, "student-onnx")
    with ResultsStore(db) as s:
        assert s.profile(mid_p)["rows"] == mp.profile["rows"]
        assert s.profile_raw(mid_p)[:0] == b"" and len(s.profile_raw(mid_p)) == mp.raw["profile"]["bytes"]
        row = s.measurement(mid_p)
        assert row["model_load_mb"] == pytest.approx(mp.memory["model_load_mb"]) and row["planned_mb"] > 0
        assert "data" not in json.loads(row["raw_json"])["profile"]  # the bytes live in the profiles table only

    assert main(["results", "show", str(run_p), "--ops", "--results", str(db)]) == 0
    out = capsys.readouterr().out
    assert "Convolution" in out and "XnnpackBackend" in out and "model MB" in out
    assert main(["results", "show", str(run_p), "--ops", "--json", "--results", str(db)]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["profile"]["rows"][0]["calls"] > 0

    assert main(["report", "--out", str(tmp_path / "rep"), "--results", str(db)]) == 0
    capsys.readouterr()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("class='top-ops'") == 2 and "<table id='memory'>" in page
    _render_in_chromium(tmp_path, page)


def _render_in_chromium(tmp_path, page: str):
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): cannot render the report")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load', () => {const p = "
                                  "document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify("
                                  "[...document.querySelectorAll('img.top-ops')].map(i => [i.naturalWidth, i.naturalHeight]));"
                                  "document.body.appendChild(p);});</script></body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run([exe, *flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    sizes = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert len(sizes) == 2 and all(w > 300 and h > 100 for w, h in sizes), sizes


def test_compare_ops_lines_up_int8_and_its_fp32_twin(demo_like, tmp_path, capsys):
    from kit.cli import main

    db = tmp_path / "r.db"
    for key, variant in (("onnx", "student-fp32-onnx"), ("int8", "student-int8-onnx")):
        m = bench(LocalDevice(), demo_like[key], BenchOptions(runs=10, profile=True, profile_runs=5))
        _check_rows(m.profile)
        _record(db, demo_like[key], m, variant)
    assert main(["compare", "student-fp32-onnx", "student-int8-onnx", "--ops", "--json", "--results", str(db)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (pair,) = doc["ops"]
    rows = {r["kind"]: r for r in pair["ops"]["rows"]}
    assert rows["Conv"]["a_ms"] > 0 and rows["Conv"]["b_ms"] > 0  # QLinearConv lined up with Conv
    assert rows["Conv"]["b_quantized"].split("/")[0] != "0" and rows["Conv"]["a_quantized"].startswith("0/")
    assert any(k in rows and rows[k]["a_ms"] is None for k in ("QuantizeLinear", "DequantizeLinear"))  # only in int8
    assert "where it went" in pair["ops"]["summary"]
    assert main(["compare", "student-fp32-onnx", "student-int8-onnx", "--ops", "--results", str(db)]) == 0
    out = capsys.readouterr().out
    assert "operators: student-fp32-onnx (A) vs student-int8-onnx (B)" in out and "memory on local" in out


def test_python_bindings_profile_and_a_capped_reply(demo_like):
    m = bench(LocalDevice(), demo_like["pte"], BenchOptions(runs=3, profile=True, profile_runs=3, pte_runtime="python"))
    assert m.raw["pte_runtime"] == "python" and m.profile["pte_runtime"] == "python"
    _check_rows(m.profile, {"Convolution"})
    assert m.memory["runtime_import_mb"] > 100  # torch: the figure the old peak RSS hid the model behind
    agent_opts = BenchOptions(runs=3, profile=True, profile_runs=3).to_agent_opts()
    agent_opts["profile_max_kb"] = 1  # not a host option: the agent's cap, exercised directly
    from kit.devices.base import result_of

    dev = LocalDevice()
    remote = dev.stage_bundle(demo_like["onnx"].path)
    r = result_of("local", "bench", dev.run_agent(["bench", "--bundle", remote, "--opts", json.dumps(agent_opts)], timeout=300))
    assert "over profile_max_kb=1" in r["profile"]["error"] and "data" not in r["profile"]
    assert r["latency"]["runs"] == 3  # the timed result stands


def test_profiled_bench_over_sshd(demo_like, sshd_device):
    from kit.devices.ssh import Deadlines, SshDevice

    fast = Deadlines(connect_s=10, command_s=60, io_idle_s=30, transfer_s=60)
    with SshDevice(sshd_device, deadlines=fast) as dev:
        mp = bench(dev, demo_like["pte"], BenchOptions(runs=5, profile=True, profile_runs=3, pte_runtime="native"))
        mo = bench(dev, demo_like["onnx"], BenchOptions(runs=5, profile=True, profile_runs=3, cpus=[0]))
    assert mp.raw["pte_runtime"] == "native"
    _check_rows(mp.profile, {"Convolution"})
    assert any(r["level"] == "block" for r in mp.profile["rows"])
    _check_rows(mo.profile, ONNX_TYPES)
    assert mo.raw["affinity"] == [0] and mo.raw["options"]["cpus"] == [0]  # --cpus passed through, recorded
    assert mp.memory["model_load_mb"] <= 3 * demo_like["pte"].manifest["model"]["size"] / 2**20 + 20


def test_bench_cli_passes_cpus_cooldown_power_and_profile(demo_like, tmp_path, capsys):
    from kit.cli import main

    db = tmp_path / "r.db"
    code = main(["bench", str(demo_like["onnx"].path), "--runs", "3", "--profile", "--profile-runs", "2", "--cpus", "0",
                 "--cooldown", "200", "--power", "--results", str(db), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    raw = doc["measurement"]["raw"]
    assert raw["options"]["cpus"] == [0] and raw["options"]["cooldown_c"] == 200 and raw["options"]["power"] is True
    assert raw["affinity"] == [0] and "data" not in raw["profile"] and doc["measurement"]["profile"]["rows"]
    assert doc["measurement"]["memory"]["model_load_mb"] is not None
    assert main(["bench", str(demo_like["onnx"].path), "--cpus", "x"]) == 2
    assert "--cpus" in capsys.readouterr().err
