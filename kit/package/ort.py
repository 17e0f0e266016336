"""ONNX Runtime extras: offline graph optimisation and the mobile ORT format (.ort).

The .ort comes from ORT's own converter (`python -m onnxruntime.tools.convert_onnx_models_to_ort`),
which also writes the required-operators config a reduced ORT build takes
(`build.sh --include_ops_by_config required_operators.config`); the bundle keeps it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kit.errors import EdgeKitError

# "basic" folds constants and removes redundant nodes: portable to any CPU. "extended" adds ORT's
# fused contrib ops (still CPU-EP generic). "all" (layout, NCHWc) is machine specific: not offered.
OPT_LEVELS = ("basic", "extended")
OPS_CONFIG = "required_operators.config"


def optimize_onnx(src: str | Path, dst: str | Path, level: str = "basic") -> Path:
    """Save ORT's offline-optimised graph of `src` as `dst` (a plain .onnx any ORT >= the builder loads)."""
    import onnxruntime as ort

    if level not in OPT_LEVELS:
        raise EdgeKitError(f"optimisation level {level!r}: choose one of {', '.join(OPT_LEVELS)}")
    dst = Path(dst)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    opts.optimized_model_filepath = str(dst.with_name(dst.stem + ".part.onnx"))
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise EdgeKitError(f"{src}: onnxruntime cannot optimise it ({str(e).splitlines()[0][:200]})") from e
    Path(opts.optimized_model_filepath).replace(dst)
    return dst


def convert_to_ort(src: str | Path, out_dir: str | Path, target_platform: str | None = None) -> tuple[Path, Path]:
    """Convert one .onnx to .ort with ORT's converter; return (model.ort, required_operators.config)."""
    src, out_dir = Path(src), Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        # The converter takes a folder of models; give it exactly one.
        work = Path(tmp) / "in"
        work.mkdir()
        shutil.copyfile(src, work / "model.onnx")
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work),
               "--output_dir", str(Path(tmp) / "out"), "--optimization_style", "Fixed"]
        if target_platform:
            cmd += ["--target_platform", target_platform]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        made = Path(tmp) / "out" / "model.ort"
        if proc.returncode != 0 or not made.is_file():
            tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise EdgeKitError(f"{src}: conversion to the ORT format failed: {tail[:200]}")
        configs = sorted((Path(tmp) / "out").glob("*.config"))
        if not configs:
            raise EdgeKitError(f"{src}: the ORT converter wrote no required-operators config")
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made, out_dir / "model.ort")
        shutil.copyfile(configs[0], out_dir / OPS_CONFIG)
    return out_dir / "model.ort", out_dir / OPS_CONFIG
