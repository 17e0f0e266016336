"""Host pipeline speed (issue 9): compress + package MobileNetV2 (224x224) for each target, then
the same again unchanged. The second run goes through the content-addressed build cache
(kit.cache: model weights + recipe + data + signing key + library versions + the kit's own code), so it should skip
the work: the JSON gives both times and their ratio, measured in one run.

    python benchmarks/pipeline.py [--recipes x86-64-int8,x86-64-int8-ort,android-arm64-ort]

Weights and data are random (nothing can be downloaded here): timing does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="x86-64-int8,x86-64-int8-ort,android-arm64-ort")
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGEKIT_CACHE"] = str(Path(tmp) / "cache")  # a cold cache for the first run
        import torchvision.models as tvm

        from kit.data import Dataset, Splits
        from kit.package.signing import ensure_keys
        from kit.recipes import load_recipe
        from kit.pipeline.build import apply_recipe

        ensure_keys()
        torch.manual_seed(0)
        model = tvm.mobilenet_v2(weights=None).eval()
        rng = np.random.default_rng(0)

        def part(n):
            return Dataset(rng.standard_normal((n, 3, args.size, args.size)).astype(np.float32),
                           rng.integers(0, 1000, n).astype(np.int64))

        splits = Splits(train=part(8), calib=part(16), test=part(8), num_classes=1000, name="random224")
        doc = {"model": "torchvision:mobilenet_v2", "input": [1, 3, args.size, args.size], "targets": {}}
        for name in args.recipes.split(","):
            recipe = load_recipe(name, [f"input.image_size={args.size}", "input.channels=3"])
            times, hits = [], []
            for i in range(2):
                t0 = time.perf_counter()
                applied = apply_recipe(recipe, model, splits, Path(tmp) / f"{name}-{i}", name="mobilenet_v2",
                                       cache=True, baseline_accuracy=0.0)
                times.append(time.perf_counter() - t0)
                hits.append(applied.from_cache)
            doc["targets"][name] = {"format": recipe.format, "first_s": round(times[0], 2), "rerun_s": round(times[1], 2),
                                    "rerun_ratio": round(times[1] / times[0], 4), "cache_hit": hits,
                                    "bundle_bytes": applied.size_bytes}
            print(f"# {name} done", file=sys.stderr)
    emit(doc)


if __name__ == "__main__":
    main()
