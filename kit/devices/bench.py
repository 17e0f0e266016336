"""`bench(device, bundle)`: run the agent's bench verb on a device and return a Measurement."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from kit.devices.base import Device, result_of

if TYPE_CHECKING:  # kit.package imports torch: not needed to talk to a device
    from kit.package.bundle import Bundle


@dataclass
class BenchOptions:
    runs: int = 50
    warmup: int = 5
    threads: int = 1
    min_time_s: float = 0.0
    deadline_s: float = 600.0
    power: bool = False
    max_memory_mb: int | None = None  # on top of the runtime's own import size (agent default 2048)
    max_cpu_s: float | None = None
    input_shape: list[int] | None = None
    cpus: list[int] | None = None  # pin the model to these cores (big.LITTLE: the cores decide the result)
    idle_s: float | None = None  # idle power measured this long before the run (with power)
    cooldown_c: float | None = None  # wait until the SoC is this cool before timing
    pte_runtime: str = "auto"  # .pte: native (the runner, pushed once), python (the bindings), auto (native if possible)
    profile: bool = False  # extra profiled runs after the timed ones; the per-operator table lands in Measurement.profile
    profile_runs: int = 10

    def to_agent_opts(self) -> dict:
        opts = {k: v for k, v in asdict(self).items() if v is not None}
        if not self.profile:  # agents before issue 16 know no profile options
            opts.pop("profile", None)
            opts.pop("profile_runs", None)
        return opts


@dataclass
class Measurement:
    device: str
    bundle_id: str
    model_name: str
    runtime: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    runs: int
    load_ms: float
    first_inference_ms: float
    peak_rss_mb: float
    reference_passed: bool
    threads: int
    samples_summary: dict = field(default_factory=dict)
    power: dict = field(default_factory=dict)
    thermal: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)  # the split: runtime import, model load, inference peak, planned (MiB)
    profile: dict | None = None  # kit.profiles table (rows per operator / delegate block), with --profile

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def bench(device: Device, bundle: Bundle, options: BenchOptions | None = None) -> Measurement:
    """Measure `bundle` on `device` (any kit.devices.base.Device) with the device agent.
    Raises AgentRefused (its code: hash_mismatch, bad_signature, ...) when the agent says no."""
    options = options or BenchOptions()
    opts = options.to_agent_opts()
    skipped = None
    if bundle.manifest.get("runtime", {}).get("name") == "executorch":
        from kit.devices.native import ensure_runner

        digest, skipped = ensure_runner(device, options.pte_runtime)
        if digest:
            opts["native_runner"] = digest
    else:
        opts.pop("pte_runtime", None)  # only .pte bundles have a choice (older agents know no such option)
    remote = device.stage_bundle(bundle.path)
    doc = device.run_agent(["bench", "--bundle", remote, "--opts", json.dumps(opts)], timeout=options.deadline_s + 120)
    r = result_of(device.name, f"bench of {bundle.path.name}", doc)
    if skipped:
        r["native_runner_skipped"] = skipped
    r["options"] = opts  # as sent: cpus, power, cooldown_c, profile ... recorded with the figures
    profile = None
    if isinstance(r.get("profile"), dict):
        from kit.profiles import profile_table

        profile = profile_table(r["profile"], bundle.path)
    return measurement_from_result(device.name, r, profile)


def measurement_from_result(device: str, r: dict, profile=None) -> Measurement:
    """A Measurement from the agent's bench result (also what an Ansible play collected)."""
    lat = r["latency"]
    return Measurement(
        device=device, bundle_id=r["bundle_id"], model_name=r.get("model_name") or "", runtime=r["runtime"],
        p50_ms=lat["p50_ms"], p90_ms=lat["p90_ms"], p99_ms=lat["p99_ms"], mean_ms=lat["mean_ms"], std_ms=lat["std_ms"],
        cv=lat["cv"], runs=lat["runs"], load_ms=r["load_ms"], first_inference_ms=r["first_inference_ms"],
        peak_rss_mb=r["peak_rss_mb"], reference_passed=r["reference_check"]["passed"], threads=r["threads"],
        samples_summary=lat, power=r.get("power", {}), thermal=r.get("thermal", {}), raw=r,
        memory=memory_split(r), profile=profile,
    )


def memory_split(r: dict) -> dict:
    """The agent's memory figures (MiB) with load and first-inference times; older agents: what they sent."""
    mem = dict(r.get("memory") or {})
    mem.setdefault("peak_rss_mb", r.get("peak_rss_mb"))
    if "runtime_rss_mb" not in mem and r.get("rss_after_import_mb") is not None:
        mem["runtime_rss_mb"] = r["rss_after_import_mb"]
    mem["load_ms"], mem["first_inference_ms"] = r.get("load_ms"), r.get("first_inference_ms")
    return mem
