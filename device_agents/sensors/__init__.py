"""Power and thermal measurement around one timed run. Where no sensor is readable the result
says so and why; a figure is reported only when it was measured."""

from __future__ import annotations

import time

from device_agents.sensors import power, thermal
from device_agents.sensors.config import SensorConfig
from device_agents.sensors.sampler import PeriodicSampler, window_power
from device_agents.sensors.system import info

__all__ = ["RunMonitor", "SensorConfig", "info", "power", "thermal"]


class RunMonitor:
    """Idle power, then power and clock samples in the background while the child runs.

    Usage: m = RunMonitor(cfg, power=True, idle_s=1); m.start(); <run child>; m.finish(window, runs, cpus)
    """

    def __init__(self, cfg: SensorConfig, *, power_requested: bool, idle_s: float = 1.0,
                 cooldown_c: float | None = None, cooldown_max_s: float = 120.0, interval_s: float | None = None):
        self.cfg = cfg
        self.power_requested = power_requested
        self.idle_s = idle_s
        self.cooldown = (cooldown_c, cooldown_max_s)
        self.interval_s = interval_s
        self.backend, self.reasons = (power.discover(cfg) if power_requested else (None, {}))
        self.idle: dict | None = None
        self.cooldown_result: dict | None = None

    def _sampler(self):
        return PeriodicSampler(self.backend.read, self.interval_s or self.backend.interval_s)

    def start(self) -> None:
        if self.cooldown[0] is not None:
            self.cooldown_result = thermal.wait_cool(self.cfg, self.cooldown[0], self.cooldown[1])
        if self.backend and self.idle_s > 0:
            s = self._sampler().start()
            s.wait_past(0.0)  # the first reading, so one lies before t0
            t0 = time.monotonic()
            time.sleep(self.idle_s)
            t1 = time.monotonic()
            s.wait_past(t1)  # and one after t1, for counter interpolation
            try:
                self.idle = window_power(s.stop(), self.backend.kind, t0, t1)
            except ValueError as e:
                self.idle = {"error": str(e)}
        self.before = thermal.snapshot(self.cfg)
        self.freq = PeriodicSampler(lambda: thermal.freq_sample(self.cfg), 0.25).start()
        self.power = self._sampler().start() if self.backend else None
        if self.power:
            self.power.wait_past(0.0)  # a reading exists before the child can open its window

    def finish(self, window: tuple[float, float] | None, runs: int | None, busy_cpus: list[int] | None) -> tuple[dict, dict]:
        if self.power and window:
            self.power.wait_past(window[1])  # a sample past the window's end
        samples = self.power.stop() if self.power else []
        freq = self.freq.stop()
        therm = thermal.summary(self.before, thermal.snapshot(self.cfg), freq, busy_cpus)
        if self.cooldown_result is not None:
            therm["cooldown"] = self.cooldown_result
        return self._power_result(samples, window, runs), therm

    def _power_result(self, samples, window, runs) -> dict:
        if not self.power_requested:
            return {"available": False, "reason": "power measurement not requested (power option)"}
        if not self.backend:
            return {"available": False, "reason": "no power sensor readable on this device: " +
                    "; ".join(f"{k}: {v}" for k, v in self.reasons.items())}
        desc = self.backend.describe()
        if not window or not runs:
            return {"available": False, "reason": "no timed window to attribute power to", **desc}
        try:
            w = window_power(samples, self.backend.kind, *window)
        except ValueError as e:
            return {"available": False, "reason": str(e) + (f" (sensor errors: {self.power.errors})" if self.power.errors else ""), **desc}
        out = {"available": True, **desc, "mean_w": w["mean_w"], "window_s": window[1] - window[0],
               "samples": w["samples"], "interval_s": self.power.interval_s,
               "energy_mj_per_inference": w["energy_j"] * 1e3 / runs}
        if self.idle and "mean_w" in self.idle:
            net = w["mean_w"] - self.idle["mean_w"]
            out.update({"idle_w": self.idle["mean_w"], "idle_s": self.idle_s, "net_w": net,
                        "net_energy_mj_per_inference": net * (window[1] - window[0]) * 1e3 / runs})
        else:
            out["idle_w"] = None
            out["idle_reason"] = (self.idle or {}).get("error") or "idle power not measured (idle_s = 0)"
        return out
