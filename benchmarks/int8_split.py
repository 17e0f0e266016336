"""Where ONNX Runtime's int8 speed-up comes from on this CPU: dense convs, depthwise convs, the rest.

Give pairs of the same model as fp32 and int8 .onnx (files or bundle directories, e.g. the builds
`benchmarks/pays_off.py` leaves in $EDGEKIT_CACHE/builds/*/*/bundle). Both are profiled with ORT's
profiler in one run, taking turns, and each node's kernel time is put in one of three classes by
the optimised graph's Conv `group` attribute. The JSON shows per class the fp32 ms, int8 ms and their
ratio, and `bound_if_rest_free`: the end-to-end speed-up int8 could reach if everything but its
dense convs cost nothing. Where that bound is below a target, no int8 recipe alone can meet it.

    python benchmarks/int8_split.py --pair mobilenet_v2 FP32 INT8 [--pair NAME FP32 INT8] [--threads 1] [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import cpu_facts  # noqa: E402


def _onnx_path(p: str) -> Path:
    path = Path(p)
    return path / "model.onnx" if path.is_dir() else path


def _class_ms(model: Path, threads: int, runs: int) -> dict[str, float]:
    import onnx
    import onnxruntime as ort

    from kit.profiles.ort import parse_trace

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")  # node names as profiled
        sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feed = {inp.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
        for _ in range(runs + 10):  # parse_trace keeps the last `runs`: the first ones warm up
            sess.run(None, feed)
        trace = Path(sess.end_profiling()).read_bytes()
        graph = onnx.load(opts.optimized_model_filepath).graph
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in graph.node}
    out = {"dense conv": 0.0, "depthwise conv": 0.0, "rest": 0.0}
    for row in parse_trace(trace, runs)["rows"]:
        cls = "rest" if row["kind"] != "Conv" else "depthwise conv" if groups.get(row["name"], 1) > 1 else "dense conv"
        out[cls] += row["total_ms"]
    return out


def split(fp32: Path, int8: Path, threads: int, runs: int, rounds: int = 3) -> dict:
    per = {"fp32": [], "int8": []}
    for _ in range(rounds):  # taking turns: a drift in the machine's speed hits both alike
        per["fp32"].append(_class_ms(fp32, threads, runs))
        per["int8"].append(_class_ms(int8, threads, runs))
    med = {side: {c: float(np.median([r[c] for r in rs])) for c in rs[0]} for side, rs in per.items()}
    classes = {c: {"fp32_ms": round(med["fp32"][c], 3), "int8_ms": round(med["int8"][c], 3),
                   "speedup": round(med["fp32"][c] / med["int8"][c], 3) if med["int8"][c] else None}
               for c in med["fp32"]}
    tot32, tot8 = sum(med["fp32"].values()), sum(med["int8"].values())
    return {"classes": classes, "fp32_kernel_ms": round(tot32, 3), "int8_kernel_ms": round(tot8, 3),
            "speedup": round(tot32 / tot8, 3),
            "bound_if_rest_free": round(tot32 / med["int8"]["dense conv"], 3) if med["int8"]["dense conv"] else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=3, action="append", metavar=("NAME", "FP32", "INT8"), required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    for name, f32, i8 in a.pair:
        for p in (f32, i8):
            if not _onnx_path(p).is_file():
                sys.exit(f"int8_split: {name}: {_onnx_path(p)} is not an .onnx file; give a .onnx or a bundle directory")
    doc = {"benchmark": "int8_split", "machine": cpu_facts(), "threads": a.threads, "runs": a.runs,
           "models": {name: split(_onnx_path(f32), _onnx_path(i8), a.threads, a.runs) for name, f32, i8 in a.pair}}
    text = json.dumps(doc, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
