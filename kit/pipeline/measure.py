"""Measure one bundle on one device: push -> bench -> record -> twins -> regression.

`measure(device, bundle, store)` is the one place the kit turns a bundle into a stored
measurement. `edgekit bench`, the recipe search, the student search and the demo all call it:
with `reuse=True` an earlier measurement of the same artifact (model sha256) on the same device
with the same thread count is taken from the store instead of benching again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kit.errors import EdgeKitError
from kit.progress import ProgressFn


@dataclass
class MeasureOutcome:
    run_id: int
    measurement_id: int
    measurement: object | None  # kit.devices.Measurement; None when `reused`
    reused: bool = False  # the figures came from the store, not from a new bench
    row: dict = field(default_factory=dict)  # the stored row (ResultsStore.measurement), both ways
    twins: list = field(default_factory=list)  # kit.results.twins.Speedup this measurement takes part in
    regression: object | None = None  # kit.results.regression.RegressionVerdict with a baseline run

    @property
    def p50_ms(self) -> float | None:
        return self.row.get("p50_ms")

    @property
    def p99_ms(self) -> float | None:
        return self.row.get("p99_ms")

    @property
    def reference_passed(self) -> bool | None:
        value = self.row.get("reference_passed")
        return None if value is None else bool(value)

    @property
    def energy_mj(self) -> float | None:
        """Energy per inference, when the device has a power sensor and power was asked for."""
        return self.row.get("energy_mj")


def open_device(name: str, inventory: str | Path | None = None):
    """One device by inventory name or group of one; 'local' needs no inventory file."""
    from kit.devices.inventory import Inventory, connect

    if name == "local" and inventory is None:
        return connect("local")
    inv = Inventory.load(inventory)
    entries = inv.select(name)
    if len(entries) != 1:
        raise EdgeKitError(f"--device {name}: names {len(entries)} devices; measure on one device at a time")
    return connect(entries[0], inv)


def _push(device, bundle, options, progress: ProgressFn, step: Callable[[str], None]) -> None:
    # SSH devices: install/refresh the agent and send the bundle with progress bars. bench()
    # stages again, but staging is content-addressed, so nothing is sent twice.
    if hasattr(device, "ensure_agent"):
        step("agent")
        device.ensure_agent(progress)
        step(f"pushing {bundle.path.name}")
        device.stage_bundle(bundle.path, progress)
    step(f"benchmarking {options.runs} runs x {options.threads} thread(s) on {device.name}")


def measure(device, bundle, store, *, options=None, run_id: int | None = None, variant: str | None = None,
            recipe=None, accuracy: float | None = None, accuracy_n: int | None = None, emulated: bool | None = None,
            reuse: bool = False, baseline_run: int | None = None, progress: ProgressFn = None,
            step: Callable[[str], None] | None = None) -> MeasureOutcome:
    """Measure `bundle` (a kit.package.Bundle) on `device` and record it in `store`.

    `options`: kit.devices.BenchOptions (default: its defaults). `run_id`: record into this run;
    without it a "bench" run is started and finished around the one measurement. `variant` labels
    the artifact (default: the manifest's variant, else the bundle folder's name); `recipe`,
    `accuracy` and `accuracy_n` go with it. `emulated` defaults to the device's own flag.
    `baseline_run`: also judge the run against that run (kit.results.regression).
    """
    from kit.devices.bench import BenchOptions, bench
    from kit.results.twins import twin_speedups

    options = options or BenchOptions()
    step = step or (lambda label: None)
    sha256 = bundle.manifest["model"]["sha256"]
    known = store.find_measurement(sha256, device.name, options.threads) if reuse else None
    if known is not None:
        outcome = MeasureOutcome(known["run_id"] if run_id is None else run_id, known["id"], None, True, known)
    else:
        _push(device, bundle, options, progress, step)
        m = bench(device, bundle, options)
        own_run = run_id is None
        if own_run:
            run_id = store.start_run("bench", f"{bundle.path.name} on {device.name}",
                                     {"runs": options.runs, "warmup": options.warmup, "threads": options.threads,
                                      "device": device.name})
        mid = store.record(run_id, bundle, m, variant or bundle.manifest.get("variant") or bundle.path.name, accuracy,
                           recipe=recipe, accuracy_n=accuracy_n,
                           emulated=getattr(device, "emulated", None) if emulated is None else emulated)
        if own_run:
            store.finish_run(run_id)
        outcome = MeasureOutcome(run_id, mid, m, False, store.measurement(mid))
    outcome.twins = twin_speedups(store, outcome.measurement_id)
    if baseline_run is not None:
        from kit.results.regression import check_against_baseline

        outcome.regression = check_against_baseline(store, outcome.run_id, baseline_run)
    return outcome
