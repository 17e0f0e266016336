"""Checks on the arrays a quantizer is handed, made at its door: NaN/Inf in calibration data would
otherwise surface as an observer's or ORT's assertion (`AssertionError: scale issue`) deep inside."""

from __future__ import annotations

import numpy as np

from kit.errors import EdgeKitError


def check_finite(data, what: str = "calibration data", max_samples: int | None = None) -> None:
    """Refuse `data` (a kit.data.Dataset, or None/empty: left to the caller) holding NaN or Inf in
    its first `max_samples` samples, with one line naming `what`, the counts and the first sample."""
    if data is None or len(data) == 0:
        return
    x = np.asarray(data.x if max_samples is None else data.x[:max_samples])
    if not np.issubdtype(x.dtype, np.floating):
        return
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    per_sample = bad.reshape(len(x), -1).any(axis=1)
    first = int(np.argmax(per_sample))
    raise EdgeKitError(
        f"{what}: {nan} NaN and {inf} Inf values in {int(per_sample.sum())} of {len(x)} samples (first: sample {first}); "
        "a quantizer cannot calibrate on them: clean or drop those samples")
