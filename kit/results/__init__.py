"""Results store (SQLite), comparisons with a noise verdict, regression checks, the Pareto front,
compressed-vs-uncompressed twins, exports and reports. Nothing here knows a transport; matplotlib
and scipy load inside the functions that draw or test."""

from kit.results.compare import Comparison, NoiseVerdict, compare, latency_verdict
from kit.results.export import export
from kit.results.pareto import front_of, pareto_front
from kit.results.regression import RegressionVerdict, check_against_baseline
from kit.results.report import write_report, write_store_report
from kit.results.store import ResultsStore
from kit.results.twins import Speedup, twin_speedups

__all__ = ["ResultsStore", "compare", "Comparison", "NoiseVerdict", "latency_verdict", "check_against_baseline",
           "RegressionVerdict", "export", "pareto_front", "front_of", "Speedup", "twin_speedups", "write_report",
           "write_store_report"]
