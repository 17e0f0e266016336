"""Weight clustering (k-means codebook per layer, scikit-learn's KMeans) and log (power-of-two)
weight quantization. Both keep float tensors, so a dense .pte/.onnx is as big as before: the gain
is that each layer holds few distinct values, which a codebook format stores in log2(k) bits per
weight and a generic compressor (gzip of the packaged file) partly finds. The report gives both
figures, never just the theoretical one."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from typing import TYPE_CHECKING, Literal

import numpy as np

from kit.compress.base import Pass, StepContext, StepResult
from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

if TYPE_CHECKING:
    from torch import nn


@dataclass
class Cluster(Pass):
    scheme: str = "kmeans"  # kmeans | log2 (power-of-two)
    clusters: int = 16  # kmeans: codebook entries per layer
    bits: int = 4  # log2: sign bit + (bits - 1) bits of exponent (zero is one of the codes)
    min_params: int = 64  # smaller layers (e.g. a 1-channel stem) stay as they are
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    method: Literal["cluster"] = "cluster"

    def __post_init__(self):
        if self.scheme not in ("kmeans", "log2"):
            raise EdgeKitError(f"cluster scheme={self.scheme!r}: choose kmeans or log2")
        if not 2 <= self.clusters <= 256:
            raise EdgeKitError(f"cluster clusters={self.clusters}: choose 2..256 codebook entries")
        if not 2 <= self.bits <= 8:
            raise EdgeKitError(f"cluster bits={self.bits}: choose 2..8")

    def apply(self, model, ctx: StepContext) -> StepResult:
        return StepResult(*cluster(model, self, ctx.progress))


def _kmeans(w: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    flat = w.reshape(-1, 1).astype(np.float64)
    k = min(k, len(np.unique(flat)))
    # Fit on a sample for big layers (1-D k-means converges on a few tens of thousands of points),
    # then assign every weight to its nearest centroid.
    rng = np.random.default_rng(seed)
    fit = flat if len(flat) <= 50_000 else flat[rng.choice(len(flat), 50_000, replace=False)]
    km = KMeans(n_clusters=k, n_init=1, init="k-means++", random_state=seed).fit(fit)
    codebook = km.cluster_centers_.ravel()
    idx = km.predict(flat)
    return codebook[idx].reshape(w.shape).astype(np.float32), codebook


def _log2(w: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    levels = 2 ** (bits - 1) - 1  # exponents available besides zero
    mag = np.abs(w)
    top = math.floor(math.log2(float(mag.max()))) if mag.max() > 0 else 0
    low = top - levels + 1
    with np.errstate(divide="ignore"):
        exp = np.round(np.log2(np.where(mag > 0, mag, 1e-30)))
    exp = np.clip(exp, low, top)
    q = np.sign(w) * np.exp2(exp)
    q[mag < 2.0 ** (low - 1)] = 0.0  # below half the smallest level: zero is closer
    return q.astype(np.float32), levels * 2 + 1


def cluster(model: nn.Module, config: Cluster, progress: ProgressFn = None):
    """Return (clustered copy of `model`, info: per-layer distinct values and packed-size estimates)."""
    import torch
    from torch import nn

    model = copy.deepcopy(model).eval()
    known = dict(model.named_modules())
    for name in config.exclude:
        if name not in known:
            raise EdgeKitError(f"cluster exclude: no module named {name!r} in {type(model).__name__}")
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear)) and n not in config.exclude and m.weight.numel() >= config.min_params]
    if not targets:
        raise EdgeKitError(f"cluster: no Conv/Linear layer of {type(model).__name__} has >= {config.min_params} weights")
    layers = {}
    packed_bits = 0
    float_bits = 0
    for i, (name, m) in enumerate(targets):
        w = m.weight.detach().numpy()
        if config.scheme == "kmeans":
            q, codebook = _kmeans(w, config.clusters, config.seed)
            codes = len(codebook)
        else:
            q, codes = _log2(w, config.bits)
        m.weight.data = torch.from_numpy(q)
        index_bits = max(1, math.ceil(math.log2(codes)))
        bits = w.size * index_bits + codes * 32  # indices + a float32 codebook
        packed_bits += bits
        float_bits += w.size * 32
        layers[name] = {"distinct": int(len(np.unique(q))), "index_bits": index_bits,
                        "weight_sqnr_db": _sqnr(w, q)}
        report(progress, "cluster", i + 1, len(targets))
    return model, {
        "layers": layers,
        "clustered_weight_bytes_fp32": float_bits // 8,
        "codebook_packed_bytes": packed_bits // 8,  # what a codebook format would store (not what .pte stores)
    }


def _sqnr(ref: np.ndarray, q: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - q) ** 2))
    return round(10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise), 2) if noise else None
