"""Results store (SQLite) and reports."""

from kit.results.store import ResultsStore

__all__ = ["ResultsStore"]
