"""Results store (SQLite), comparisons with a noise verdict, regression checks, exports and reports."""

from kit.results.compare import Comparison, NoiseVerdict, compare, latency_verdict
from kit.results.export import export
from kit.results.regression import RegressionVerdict, check_against_baseline
from kit.results.report import twin_speedups, write_report, write_store_report
from kit.results.store import ResultsStore

__all__ = ["ResultsStore", "compare", "Comparison", "NoiseVerdict", "latency_verdict", "check_against_baseline",
           "RegressionVerdict", "export", "twin_speedups", "write_report", "write_store_report"]
