"""A per-block latency table measured once on this host: each block of a model's main sequence
(MobileNetV2's `features`, EfficientNet's `blocks`) timed alone in eager torch at its real input
shape, with the recipe's thread count, minimum of `runs` (robust to a shared CPU).

Cached as JSON under $EDGEKIT_CACHE/latency/<host>.json, keyed by the block's architecture and
parameter shapes (what pruning changes), its input shape and the thread count: the same block shape
is measured once per host, whichever model or round it comes from. NetAdapt
(kit.compress.netadapt) reads the milliseconds a candidate pruning saves from it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def _host() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.node()}|{cpu}|{os.cpu_count()}".encode()).hexdigest()[:16]


def table_path() -> Path:
    from kit.cache import cache_dir

    return cache_dir().parent / "latency" / f"{_host()}.json"


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of the model's longest Sequential/ModuleList (its stages), or [] if none has 3+."""
    from torch import nn

    best: tuple[str, nn.Module] | None = None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Sequential, nn.ModuleList)) and (best is None or len(m) > len(best[1])):
            best = (name, m)
    if best is None or len(best[1]) < 3:
        return []
    return [(f"{best[0]}.{i}" if best[0] else str(i), child) for i, child in enumerate(best[1])]


def block_inputs(model: nn.Module, example) -> dict[str, tuple[int, ...]]:
    """Input shape of each block on one forward of `example`."""
    from kit.compress.hooks import forward_once

    shapes, handles = {}, []
    for name, b in blocks(model):
        handles.append(b.register_forward_pre_hook(lambda m, a, name=name: shapes.__setitem__(name, tuple(a[0].shape))))
    forward_once(model, example, handles)
    return shapes


def _key(block: nn.Module, shape, threads: int) -> str:
    sig = repr(block) + "|" + ",".join(f"{n}:{tuple(p.shape)}" for n, p in block.state_dict().items())
    return hashlib.sha256(f"{sig}|{shape}|{threads}".encode()).hexdigest()[:24]


class LatencyTable:
    def __init__(self, threads: int = 1, runs: int = 15, path: Path | None = None):
        self.threads, self.runs = threads, runs
        self.path = path or table_path()
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.measured = 0

    def block_ms(self, block: nn.Module, shape) -> float:
        key = _key(block, shape, self.threads)
        if key not in self.entries:
            self.entries[key] = self._time(block, shape)
            self.measured += 1
        return self.entries[key]

    def model_ms(self, model: nn.Module, example) -> dict[str, float]:
        """Milliseconds of each block of `model` (empty when the model has no block sequence)."""
        shapes = block_inputs(model, example)
        return {name: self.block_ms(b, shapes[name]) for name, b in blocks(model) if name in shapes}

    def _time(self, block: nn.Module, shape) -> float:
        import torch

        was = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        x = torch.randn(shape)
        block = block.eval()
        best = float("inf")
        try:
            with torch.no_grad():
                block(x)
                for _ in range(self.runs):
                    t0 = time.perf_counter()
                    block(x)
                    best = min(best, time.perf_counter() - t0)
        finally:
            torch.set_num_threads(was)
        return round(best * 1e3, 4)

    def save(self) -> None:
        if not self.measured:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)
        self.measured = 0
