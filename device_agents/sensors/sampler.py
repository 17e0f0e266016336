"""A background thread that reads a sensor at a fixed interval with monotonic timestamps, and
the arithmetic that turns its samples into the figures of one timed window.

The model runs in a child process; both use CLOCK_MONOTONIC (time.monotonic), so the child's
window [t0, t1] can be cut out of the parent's samples afterwards.
"""

from __future__ import annotations

import threading
import time


class PeriodicSampler:
    def __init__(self, read, interval_s: float):
        self.read = read
        self.interval_s = interval_s
        self.samples: list[tuple[float, object]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgekit-sampler", daemon=True)

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                value = self.read()
                self.samples.append((time.monotonic(), value))
            except Exception as e:  # a sensor that fails mid-run makes the figure unavailable, not the agent
                if len(self.errors) < 5:
                    self.errors.append(f"{type(e).__name__}: {e}")
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self) -> "PeriodicSampler":
        self._thread.start()
        return self

    def wait_past(self, t: float, timeout_s: float = 2.0) -> None:
        """Block until a sample later than t exists (the thread may lag under load)."""
        end = time.monotonic() + timeout_s
        while not (self.samples and self.samples[-1][0] > t) and time.monotonic() < end and self._thread.is_alive():
            time.sleep(self.interval_s / 4)

    def stop(self) -> list[tuple[float, object]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.samples


def _interp(samples, t: float) -> float | None:
    """Cumulative counter value at time t, linear between the samples around it."""
    for (ta, va), (tb, vb) in zip(samples, samples[1:]):
        if ta <= t <= tb:
            return va if tb == ta else va + (vb - va) * (t - ta) / (tb - ta)
    return None


def window_power(samples, kind: str, t0: float, t1: float) -> dict:
    """Mean power (W) over [t0, t1] from power samples or a cumulative energy counter (J).

    Raises ValueError with the reason when the samples cannot support a figure.
    """
    if t1 <= t0:
        raise ValueError("empty timing window")
    if kind == "energy":
        e0, e1 = _interp(samples, t0), _interp(samples, t1)
        if e0 is None or e1 is None:
            raise ValueError("the energy counter was not sampled on both sides of the timed window")
        n = sum(1 for t, _ in samples if t0 <= t <= t1)
        return {"mean_w": (e1 - e0) / (t1 - t0), "energy_j": e1 - e0, "samples": n}
    inside = [v for t, v in samples if t0 <= t <= t1]
    if len(inside) < 2:
        raise ValueError(f"only {len(inside)} power sample(s) fell inside the {t1 - t0:.3f} s timed window; "
                         f"raise min_time_s so the window spans several sensor readings")
    mean = sum(inside) / len(inside)
    return {"mean_w": mean, "energy_j": mean * (t1 - t0), "samples": len(inside)}
