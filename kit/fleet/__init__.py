"""Devices and transports: the built-in `local` device and SSH devices share one interface."""

from kit.fleet.bench import BenchOptions, Measurement, bench
from kit.fleet.local import LocalDevice

__all__ = ["BenchOptions", "Measurement", "bench", "LocalDevice"]
