"""The int8 zoo (issue 14, Build 2): every model of tests/fixtures_zoo.py (torchvision, timm and
efficientnet-lite-pytorch models, random weights, 64x64) through int8 on both runtimes into a
bundle that runs. Prints one JSON line per model x runtime (status ok / refused with the kit's
one-line error / traceback, seconds), then a summary line. tests/test_zoo.py runs a subset.

    python benchmarks/zoo.py [--models a,b] [--runtimes executorch,onnxruntime]

timm is not a dependency of the kit (nothing in the test run needs it): `pip install timm` first,
else its rows say "unavailable". Measured here with timm 1.0.31 (`pip install --no-deps timm
safetensors` keeps the pinned torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures_zoo import RUNTIMES, ZOO, run_one  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    args = ap.parse_args(argv)
    rows = []
    from kit.package.signing import init_keys

    with tempfile.TemporaryDirectory(prefix="edgekit-zoo-") as tmp:
        key = init_keys(Path(tmp) / "keys" / "signing.ed25519").private  # a throw-away signing key
        for name in args.models.split(","):
            for runtime in args.runtimes.split(","):
                row = run_one(name, runtime, Path(tmp) / f"{name.replace(':', '-')}-{runtime}", key=key)
                rows.append(row)
                print(json.dumps(row), flush=True)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(json.dumps({"summary": counts, "seconds": round(sum(r["seconds"] for r in rows), 1)}))
    return 1 if counts.get("traceback") else 0


if __name__ == "__main__":
    sys.exit(main())
