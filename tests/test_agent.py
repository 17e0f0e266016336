"""The device agent end to end: the real `python -m device_agents` subprocess (LocalDevice), real
ONNX Runtime and ExecuTorch, hostile models built with onnx.helper and packaged with the kit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel, ConfigDict

from kit.devices.local import LocalDevice
from kit.package.bundle import write_bundle

SHAPE = [1, 1, 16, 16]


class Latency(BaseModel):
    runs: int
    min_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cv: float


class Overhead(BaseModel):
    per_run_ms: float
    fraction_of_p50: float


class Flagged(BaseModel):
    model_config = ConfigDict(extra="allow")
    available: bool


class BenchResult(BaseModel):
    latency: Latency
    samples_ms: list[float]
    load_ms: float
    first_inference_ms: float
    peak_rss_mb: float
    reference_check: dict
    power: Flagged
    thermal: Flagged
    threads: int
    runtime_threads: dict
    process_threads: int
    affinity: list[int]
    thread_affinity: dict[str, int]
    agent_overhead: Overhead
    limits: dict
    runtime: str
    bundle_id: str
    model_name: str
    model_sha256: str
    verified: dict
    window: list[float]


class Envelope(BaseModel):
    schema_version: int
    agent_version: str
    verb: str
    ok: bool
    result: dict | None = None
    error: dict | None = None


def run(args: list[str], timeout: float = 300) -> dict:
    doc = LocalDevice().run_agent(args, timeout=timeout)
    env = Envelope(**doc)
    assert env.schema_version == 1
    assert (env.result is not None) == env.ok and (env.error is not None) == (not env.ok)
    if not env.ok:
        assert set(env.error) == {"code", "message"} and env.error["code"] and env.error["message"]
    return doc


def bench(bundle, **opts) -> dict:
    return run(["bench", "--bundle", str(bundle.path), "--opts", json.dumps(opts)])


def test_info_reports_cpu_runtimes_and_sensor_reasons():
    r = run(["info"])["result"]
    assert r["arch"] and r["cores"] >= 1 and r["ram_mb"] > 0 and r["python"]
    assert r["runtimes"]["onnxruntime"] and r["runtimes"]["executorch"]
    assert r["usable_cpus"]
    # No sensors on this machine: each backend says why it is not usable.
    assert set(r["sensors"]["power_unavailable"]) == {"pi_pmic", "hwmon_ina", "rapl", "power_supply"}


def test_bench_onnx_schema_threads_and_overhead(onnx_bundle):
    doc = run(["bench", "--bundle", str(onnx_bundle.path), "--runs", "30", "--threads", "2"])
    r = BenchResult(**doc["result"])
    assert r.runtime == "onnxruntime" and r.reference_check["passed"]
    assert r.latency.runs == len(r.samples_ms) == 30 and r.latency.min_ms <= r.latency.p50_ms <= r.latency.max_ms
    assert r.runtime_threads["intra_op_num_threads"] == 2
    # The agent's own timing cost per run is measured (it must stay far below the model's latency).
    assert 0 < r.agent_overhead.per_run_ms < r.latency.p50_ms
    assert r.power.available is False and "not requested" in r.power.reason
    assert r.limits["max_memory_mb"] == 2048 and r.limits["open_files"] == 256


def test_threads_take_effect_in_the_child(onnx_bundle):
    one = bench(onnx_bundle, runs=5, threads=1)["result"]
    two = bench(onnx_bundle, runs=5, threads=2)["result"]
    assert two["process_threads"] > one["process_threads"]  # ORT's intra-op pool grew


def test_cpu_pinning_applies_to_every_runtime_thread(pte_bundle):
    doc = bench(pte_bundle, runs=10, threads=2, cpus=[0])
    r = BenchResult(**doc["result"])
    assert r.runtime == "executorch" and r.reference_check["passed"]
    assert r.affinity == [0]
    assert r.thread_affinity == {"0": r.process_threads}  # threads made after pinning inherit the mask
    assert r.runtime_threads["threadpool"] == 2


def test_unusable_cpu_and_unknown_option_are_refused(onnx_bundle):
    import os

    bad_cpu = max(os.sched_getaffinity(0)) + 1
    err = bench(onnx_bundle, cpus=[bad_cpu])["error"]
    assert err["code"] == "bad_option" and str(bad_cpu) in err["message"]
    err = bench(onnx_bundle, thread=2)["error"]  # a typo must not silently bench with defaults
    assert err["code"] == "bad_option" and "thread" in err["message"]
    assert bench(onnx_bundle, runs=1)["error"]["code"] == "bad_option"


def test_corrupt_bundle_is_refused_before_the_model_runs(onnx_bundle, tmp_path):
    copy = tmp_path / "corrupt"
    shutil.copytree(onnx_bundle.path, copy)
    model = copy / onnx_bundle.manifest["model"]["file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    doc = run(["bench", "--bundle", str(copy)])
    assert not doc["ok"] and doc["error"]["code"] == "hash_mismatch"


def test_wrong_input_shape_is_a_clear_error(onnx_bundle):
    err = bench(onnx_bundle, input_shape=[1, 3, 16, 16])["error"]
    assert err["code"] == "bad_input_shape" and "[1, 3, 16, 16]" in err["message"] and "[1, 1, 16, 16]" in err["message"]
    ok = bench(onnx_bundle, input_shape=SHAPE, runs=3)
    assert ok["ok"] and ok["result"]["input_shape"] == SHAPE


def _memory_bomb(path, floats_per_input_element: int):
    """ConstantOfShape of (input elements x N) floats: sized from the input, so never constant-folded at load."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, SHAPE)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, SHAPE)
    nodes = [helper.make_node("Shape", ["input"], ["s"]),
             helper.make_node("ReduceProd", ["s"], ["k"], keepdims=1),
             helper.make_node("Mul", ["n", "k"], ["big"]),
             helper.make_node("ConstantOfShape", ["big"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=0),
             helper.make_node("Add", ["input", "total"], ["output"])]
    init = [numpy_helper.from_array(np.array([floats_per_input_element], dtype=np.int64), "n")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "bomb", [x], [y], initializer=init),
                                opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def _endless_loop(path):
    """An ONNX Loop with a trip count of 2**62 whose condition stays true."""
    v = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, SHAPE)  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), v("v_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), v("v_out")],
        initializer=[numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")])
    init = [numpy_helper.from_array(np.array(2**62, dtype=np.int64), "trip"), numpy_helper.from_array(np.array(True), "cond")]
    graph = helper.make_graph([helper.make_node("Loop", ["trip", "cond", "input"], ["output"], body=body)],
                              "endless", [v("input")], [v("output")], initializer=init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    zeros = np.zeros(SHAPE, np.float32)
    _memory_bomb(d / "bomb.onnx", 2**18)  # x256 elements = 2**26 floats = 256 MiB
    _endless_loop(d / "loop.onnx")
    return {"bomb": write_bundle(d / "bomb", d / "bomb.onnx", "bomb", zeros, zeros),
            "loop": write_bundle(d / "loop", d / "loop.onnx", "loop", zeros, zeros)}


def test_model_that_exhausts_memory_gets_an_error_result(hostile):
    err = bench(hostile["bomb"], max_memory_mb=64)["error"]
    assert err["code"] == "resource_limit" and "max_memory_mb" in err["message"]
    # The same model runs with room to spare: the limit, not the model, made it fail.
    assert bench(hostile["bomb"], max_memory_mb=1024, runs=2, warmup=0)["ok"]


def test_model_that_never_finishes_is_killed_at_the_deadline(hostile):
    err = bench(hostile["loop"], deadline_s=6)["error"]
    assert err["code"] == "deadline" and "deadline_s=6" in err["message"]


def test_model_that_burns_cpu_is_stopped_by_the_cpu_limit(hostile):
    err = bench(hostile["loop"], max_cpu_s=1, deadline_s=120)["error"]
    assert err["code"] == "resource_limit" and "max_cpu_s" in err["message"]
