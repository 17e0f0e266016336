"""kit.pipeline.measure: bench -> record -> twins -> regression, and reuse of a stored measurement."""

from __future__ import annotations

import pytest

from kit.errors import EdgeKitError


def test_measure_records_then_reuses(pte_bundle, tmp_path):
    from kit.devices import BenchOptions, LocalDevice
    from kit.pipeline.measure import measure, open_device
    from kit.results.store import ResultsStore

    opts = BenchOptions(runs=5, warmup=1)
    with ResultsStore(tmp_path / "r.db") as store, open_device("local") as device:
        first = measure(device, pte_bundle, store, options=opts, variant="tiny-fp32-pte", accuracy=0.9)
        assert not first.reused and first.measurement is not None and first.run_id == 1
        assert first.p50_ms == first.measurement.p50_ms and first.reference_passed is True
        assert first.row["variant"] == "tiny-fp32-pte" and first.row["accuracy"] == 0.9
        assert store.run(first.run_id)["finished"] is not None  # its own run, finished

        # Same artifact, device and threads: taken from the store, nothing benched or recorded.
        again = measure(device, pte_bundle, store, options=opts, reuse=True)
        assert again.reused and again.measurement is None and again.measurement_id == first.measurement_id
        assert again.p50_ms == first.p50_ms and len(store.measurements()) == 1
        # Other threads: a new measurement, into the caller's run; with a baseline, a verdict.
        run = store.start_run("search")
        other = measure(LocalDevice(), pte_bundle, store, options=BenchOptions(runs=5, warmup=1, threads=2), run_id=run,
                        reuse=True)
        assert not other.reused and other.run_id == run and other.row["threads"] == 2
        later = measure(device, pte_bundle, store, options=opts, variant="tiny-fp32-pte", baseline_run=first.run_id)
        assert not later.reused and later.run_id == run + 1
        assert later.regression is not None and later.regression.baseline_run_id == first.run_id
        assert "latency" in {r.metric for r in later.regression.rows}
    with pytest.raises(EdgeKitError, match="no such file"):
        open_device("pi", tmp_path / "missing.yaml")
