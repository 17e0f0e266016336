"""Memory figures of the running process from /proc (Linux): current RSS, and a peak that can be
reset so "peak during inference" is not the peak of the import or the load."""

from __future__ import annotations


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Resident set size now (VmRSS), MiB."""
    return _status_mb("VmRSS:")


def hwm_mb() -> float | None:
    """Peak resident set size since start or the last reset_peak() (VmHWM), MiB."""
    return _status_mb("VmHWM:")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS ("5" > /proc/self/clear_refs, Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
