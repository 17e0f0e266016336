"""Fixtures for the results store and report tests: a store filled with real measurements.

Every latency figure comes from the real device agent (kit.devices.bench on LocalDevice) running
the conftest bundles and an int8 twin of the same tiny model. The only invention is a second
device label: the same local agent recorded as an *emulated* device, so the report's emulated mark
can be checked (this machine has no emulated device of its own in the test budget).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

BENCH_RUNS = 40


@dataclass
class FilledStore:
    path: Path
    run_id: int
    second_run_id: int
    variants: dict  # variant -> Bundle


class _LabelledLocalDevice:
    """The real local agent under another device name (used for the 'emulated' label only)."""

    def __init__(self, name: str):
        from kit.devices import LocalDevice

        self._local = LocalDevice()
        self.name = name
        self.emulated = True

    def run_agent(self, args, timeout=900):
        return self._local.run_agent(args, timeout)

    def stage_bundle(self, bundle_path):
        return self._local.stage_bundle(bundle_path)


@pytest.fixture(scope="session")
def int8_pte_bundle(edgekit_signing_key, tiny_model, digits16, bundles_dir):
    from kit.compress import Int8Static, quantize
    from kit.package import package

    q = quantize(tiny_model, Int8Static(per_channel=True, calib_batches=2), digits16.calib)
    return package(q, "executorch", bundles_dir / "tiny-int8-pte", digits16.test.x[:1], name="tiny")


@pytest.fixture(scope="session")
def filled_store(edgekit_signing_key, tmp_path_factory, digits16, pte_bundle, int8_pte_bundle, onnx_bundle) -> FilledStore:
    """Run 1: fp32/int8 .pte + fp32 .onnx on 'local', fp32 .pte on an 'emulated' label; run 2: the two .pte again."""
    from kit.evaluate import accuracy
    from kit.devices import BenchOptions, LocalDevice, bench
    from kit.package import runner_for
    from kit.results.store import ResultsStore

    path = tmp_path_factory.mktemp("results") / "results.db"
    variants = {"tiny-fp32-pte": pte_bundle, "tiny-int8-pte": int8_pte_bundle, "tiny-fp32-onnx": onnx_bundle}
    recipes = {
        "tiny-fp32-pte": {"name": "tiny-xnnpack-fp32", "runtime": "executorch", "format": "pte", "compress": []},
        "tiny-int8-pte": {"name": "tiny-xnnpack-int8", "runtime": "executorch", "format": "pte",
                          "compress": [{"method": "quantize", "per_channel": True, "calib_batches": 2}]},
        "tiny-fp32-onnx": {"name": "tiny-ort-fp32", "runtime": "onnxruntime", "format": "onnx", "compress": []},
    }
    acc = {v: accuracy(runner_for(b.model_file), digits16.test) for v, b in variants.items()}
    opts = BenchOptions(runs=BENCH_RUNS, warmup=3, threads=1)
    with ResultsStore(path) as store, LocalDevice() as local:
        info = local.run_agent(["info"], timeout=60)["result"]
        run_ids = []
        for names in (list(variants), ["tiny-fp32-pte", "tiny-int8-pte"]):
            run_id = store.start_run("bench", note="results tests")
            for v in names:
                b = variants[v]
                store.record(run_id, b, bench(local, b, opts), v, acc[v], recipe=recipes[v], device_info=info,
                             accuracy_n=len(digits16.test.y))
            store.finish_run(run_id)
            run_ids.append(run_id)
        emu = _LabelledLocalDevice("pi5-emulated")
        store.record(run_ids[0], pte_bundle, bench(emu, pte_bundle, opts), "tiny-fp32-pte", acc["tiny-fp32-pte"],
                     recipe=recipes["tiny-fp32-pte"], device_info={**info, "emulated": True})
    return FilledStore(path, run_ids[0], run_ids[1], variants)


@pytest.fixture
def store_copy(filled_store, tmp_path) -> Path:
    """A private copy of the filled store for tests that write to it."""
    dst = tmp_path / "results.db"
    shutil.copyfile(filled_store.path, dst)
    return dst
