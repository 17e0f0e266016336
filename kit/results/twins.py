"""Compressed vs uncompressed twins: pair each compressed artifact with the uncompressed build of
the same model (same model name, runtime, device and threads) and say whether it is faster
beyond noise. `edgekit bench` prints these lines; the report lists them and warns on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kit.results.compare import latency_verdict, variant_label
from kit.results.store import decode

_UNCOMPRESSED = {"fp32", "float", "float32", "baseline", "uncompressed", "dense", "original"}
_COMPRESSED = {"int8", "int4", "uint8", "q8", "q4", "quant", "quantized", "qdq", "qat", "pruned", "prune", "sparse",
               "lowrank", "low-rank", "cluster", "clustered", "fp16", "bf16", "distilled", "compressed"}
_NEW_MODEL_STEPS = {"distill", "train"}


@dataclass
class Point:
    """One measurement, numbered: plots label points '#n', the table explains each number."""
    n: int
    row: dict

    def __getattr__(self, key):
        try:
            return self.row[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def label(self) -> str:
        return variant_label(self.row)

    @property
    def accuracy_value(self):
        return self.row.get("accuracy") if self.row.get("accuracy") is not None else self.row.get("artifact_accuracy")

    @property
    def recipe_text(self) -> str:
        recipe = self.row.get("recipe")
        if not isinstance(recipe, dict):
            return ""
        steps = " → ".join(_step_text(s) for s in recipe.get("compress") or []) or "no compression"
        return f'{recipe.get("name") or "recipe"}: {steps}'


def _step_text(step: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in step.items() if k != "method")
    return f'{step.get("method", "?")}({params})'


def compression_state(row: dict) -> bool | None:
    """True: compressed, False: uncompressed, None: cannot tell. Recipe first, then the variant name."""
    recipe = row.get("recipe")
    if isinstance(recipe, dict) and "compress" in recipe:
        # Distillation makes a new model (its own name), not a compressed twin of the same model.
        return any(step.get("method") not in _NEW_MODEL_STEPS for step in recipe["compress"] or [])
    tokens = set(re.split(r"[-_.\s/]+", (row.get("variant") or "").lower()))
    if tokens & _COMPRESSED:
        return True
    if tokens & _UNCOMPRESSED:
        return False
    return None


@dataclass
class Speedup:
    compressed: Point
    twin: Point
    speedup: float  # twin p50 / compressed p50: above 1 means the compressed artifact is faster
    verdict: str  # latency_verdict from twin to compressed: "faster" means compressed is faster

    @property
    def honest_line(self) -> str:
        c, t = self.compressed, self.twin
        why = {"slower": "slower beyond noise", "within noise": "no faster beyond noise",
               "too few samples": "too few samples to tell"}.get(self.verdict, self.verdict)
        return f"{c.label} is {self.speedup:.2f}x {t.label} on {c.device} ({why}; p50 {c.p50_ms:.3f} ms vs {t.p50_ms:.3f} ms)"


def speedups(points: list[Point], confidence: float = 0.99) -> list[Speedup]:
    """Pair each compressed artifact with its uncompressed twin: same model name, runtime, device, threads."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault((p.model_name, p.runtime, p.device, p.threads), []).append(p)
    out = []
    for members in groups.values():
        twins = [p for p in members if compression_state(p.row) is False]
        if not twins:
            continue
        twin = max(twins, key=lambda p: p.row["id"])
        for p in members:
            if compression_state(p.row) is True and p.p50_ms and twin.p50_ms:
                v = latency_verdict(twin.row.get("samples") or [], p.row.get("samples") or [], confidence=confidence)
                out.append(Speedup(p, twin, twin.p50_ms / p.p50_ms, v.verdict))
    return out


def twin_speedups(store, measurement_id: int, confidence: float = 0.99) -> list[Speedup]:
    """The twin comparisons one new measurement takes part in: the benched artifact against its
    uncompressed twin, or (when it is the uncompressed one) every compressed artifact of the same
    model, runtime, device and thread count, each by its newest measurement."""
    new = store.measurement(measurement_id)
    if new is None:
        return []
    # speedups() does the pairing (same model name, runtime, device, threads); keep the new row's pairs.
    points = [Point(i + 1, decode(r)) for i, r in enumerate(store.latest_measurements(device=new["device"]))]
    return [s for s in speedups(points, confidence) if measurement_id in (s.compressed.row["id"], s.twin.row["id"])]
