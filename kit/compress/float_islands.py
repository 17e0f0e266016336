"""Latency-aware mixed precision for ONNX Runtime (`float_islands: auto` of ort_quantize): keep in
float the leading layers where int8 is slower on this CPU, chosen by measuring, never assumed.

Why: int8 does not win on every layer. ORT's profiler on MobileNetV2 (224 px, Intel Xeon with
AVX-512 VNNI, 1 thread) timed the first convolution (3 input channels: a 27-deep int8 GEMM) at
455 us in int8 against 294 us in fp32, and the first depthwise at 271 against 194 us, while the
pointwise layers ran 2.3-3.8x faster in int8. Keeping those layers in float costs a boundary:
ReorderOutput + QuantizeLinear + a Transpose to NHWC, about 0.27 ms at 112x112x32. So the
candidates are prefixes of the graph (its input is float anyway, and a prefix has one boundary), and
each candidate is quantized (a quick MinMax one: ORT's int8 kernels do not depend on the ranges)
and timed end to end against the all-int8 model, side by side and interleaved; the choice goes
into nodes_to_exclude before the accurate quantization. The fastest is kept only if it beats the
all-int8 model by `min_gain`. Layers further in where int8 is slower are reported, but they are left in int8: an island there has a
boundary on both sides.

It measures on this host at `threads` threads. It says nothing about another CPU, so the recipes
turn it on only where the host is the target (x86-64). The search then measures the artifact on
the device itself.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from kit.progress import report

QUANTIZABLE = ("Conv", "Gemm", "MatMul")
# unary ops ORT fuses into the convolution before them; a fused node is named after their output
FUSED_ACTIVATIONS = ("Clip", "Relu", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh")
_SUFFIX = re.compile(r"(_token_\d+|_nchwc|_fused)+$")


def quantizable_order(pre: Path) -> tuple[list[str], dict[str, str]]:
    """The quantizable nodes of `pre` in graph order, and {tensor name: node} for their outputs and
    the outputs of the activations ORT fuses into them (how the profiler names fused nodes)."""
    import onnx

    graph = onnx.load(str(pre), load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    order, tensors = [], {}
    for node in graph.node:
        if node.op_type not in QUANTIZABLE:
            continue
        order.append(node.name)
        out = node.output[0]
        tensors[out] = node.name
        nxt = consumers.get(out, [])
        if len(nxt) == 1 and nxt[0].op_type in FUSED_ACTIVATIONS:
            tensors.setdefault(nxt[0].output[0], node.name)
    return order, tensors


def weight_shares(pre: Path, order: list[str]) -> list[float]:
    """Cumulative share of the model's weight elements held by order[:1], order[:2], ...: a float
    prefix keeps its weights in fp32, so it must stay a small share for int8's size win to hold."""
    import onnx

    graph = onnx.load(str(pre), load_external_data=False).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    total = sum(sizes.values()) or 1
    wanted = set(order)
    per_node = {n.name: sum(sizes.get(i, 0) for i in n.input) for n in graph.node if n.name in wanted}
    return [float(v) for v in np.cumsum([per_node.get(n, 0) for n in order]) / total]


def _source(event_name: str, nodes: set[str], tensors: dict[str, str]) -> str | None:
    """The source node a profiled kernel ran for: QDQ fusion names it `<node>_token_<n>`, the NCHWc
    transformer `<output tensor>_nchwc`."""
    for name in (event_name, _SUFFIX.sub("", event_name)):
        if name in nodes:
            return name
        if name in tensors:
            return tensors[name]
    return None


def node_ms(model: Path, x: np.ndarray, order: list[str], tensors: dict[str, str], threads: int = 1,
            runs: int = 30) -> dict[str, float]:
    """Mean kernel ms per source node over `runs` profiled runs (ORT's profiler)."""
    import onnxruntime as ort

    from kit.profiles.ort import parse_trace

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(runs + 5):  # parse_trace keeps the last `runs` model runs: the first ones warm up
            sess.run(None, feed)
        trace = Path(sess.end_profiling()).read_bytes()
    nodes, out = set(order), {}
    for row in parse_trace(trace, runs)["rows"]:
        src = _source(row["name"], nodes, tensors)
        if src is not None:
            out[src] = out.get(src, 0.0) + row["total_ms"]
    return out


def prefix_candidates(order: list[str], fp32_ms: dict[str, float], int8_ms: dict[str, float],
                      scan: int = 12, keep: int = 3) -> list[tuple[int, float]]:
    """(prefix length, estimated ms saved) for the `keep` prefixes whose float kernels save most,
    among the first `scan` nodes; boundary costs are left to the end-to-end timing."""
    gains, saved = [], 0.0
    for k, name in enumerate(order[:scan], start=1):
        if name not in fp32_ms or name not in int8_ms:
            break  # a node the profiler did not name: no estimate beyond it
        saved += int8_ms[name] - fp32_ms[name]
        if saved > 0:
            gains.append((k, saved))
    return sorted(gains, key=lambda g: -g[1])[:keep]


def time_side_by_side(paths: list[Path], x: np.ndarray, threads: int = 1, rounds: int = 6,
                      runs: int = 40) -> list[float]:
    """Median ms of each model, the models taking turns round by round (a drift in the machine's
    speed hits them all alike)."""
    import onnxruntime as ort

    sessions = []
    for p in paths:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        sess = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        sessions.append((sess, {sess.get_inputs()[0].name: x}))
    medians: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (sess, feed) in enumerate(sessions):
            for _ in range(5):
                sess.run(None, feed)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            medians[i].append(float(np.median(times)) * 1e3)
    return [float(np.median(m)) for m in medians]


def timing_config(cfg):
    """The quantization a latency trial needs: kernels and layout only. ORT runs the same int8
    kernels whatever the ranges, so MinMax on a few inputs, no range search (a trial costs seconds,
    not the minutes of the accurate quantization that follows the choice)."""
    return dataclasses.replace(cfg, calibration="MinMax", range_search="none", keep_float=0,
                               max_samples=min(cfg.max_samples, 8))


def choose_float_islands(pre: Path, cfg, calib, quantize, progress=None):
    """Choose the leading layers of `pre` (preprocessed fp32 .onnx) to keep in float on this host,
    before the accurate quantization. `quantize(config, calib, out_path)` writes a QDQ copy of
    `pre` (kit.compress.ort_quant passes its quantize_onnx in: it imports this module). Returns
    (config with those nodes added to nodes_to_exclude, report)."""
    order, tensors = quantizable_order(pre)
    x = np.ascontiguousarray(calib.x[:1], dtype=np.float32)
    threads = cfg.float_islands_threads
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        int8 = quantize(timing_config(cfg), calib, Path(tmp) / "all-int8.onnx")
        fp32_ms, int8_ms = node_ms(pre, x, order, tensors, threads), node_ms(int8, x, order, tensors, threads)
        excluded = set(cfg.nodes_to_exclude)
        slower = [n for n in order if n in fp32_ms and n in int8_ms and int8_ms[n] > fp32_ms[n] and n not in excluded]
        info = {"threads": threads, "profiled_nodes": len(set(fp32_ms) & set(int8_ms)), "nodes": len(order),
                "slower_in_int8": [{"node": n, "int8_ms": round(int8_ms[n], 4), "fp32_ms": round(fp32_ms[n], 4)}
                                   for n in slower]}
        shares = weight_shares(pre, order)
        scan = sum(1 for sh in shares if sh <= cfg.float_islands_max_weight_share)  # shares only grow
        candidates = [(k, s) for k, s in prefix_candidates(order, fp32_ms, int8_ms, scan=min(12, scan))
                      if not set(order[:k]) <= excluded]
        if not candidates:
            why = ("int8 is faster on every leading layer here" if scan else
                   f"the first layer alone holds {shares[0]:.0%} of the weights (float_islands_max_weight_share "
                   f"{cfg.float_islands_max_weight_share:g}): in float it would undo int8's size win")
            return cfg, {**info, "chosen": None, "why": why, "seconds": round(time.time() - t0, 1)}
        cfg, trial_info = try_prefixes(order, candidates, cfg, calib, quantize, int8, x, progress)
    return cfg, {**info, **trial_info, "seconds": round(time.time() - t0, 1)}


def try_prefixes(order: list[str], candidates: list[tuple[int, float]], cfg, calib, quantize, all_int8: Path,
                 x: np.ndarray, progress=None):
    """Quantize (as choose_float_islands) with each (prefix length, estimated saving) candidate prefix in float, time
    them against `all_int8` side by side, and keep the fastest when it beats all-int8 by
    cfg.float_islands_min_gain. Returns (config with the prefix excluded, or `cfg` itself; report)."""
    excluded, threads = set(cfg.nodes_to_exclude), cfg.float_islands_threads
    with tempfile.TemporaryDirectory() as work:
        trials = []
        for i, (k, est) in enumerate(candidates):
            report(progress, "float islands: timing a candidate", i, len(candidates))
            trial_cfg = dataclasses.replace(cfg, nodes_to_exclude=[*cfg.nodes_to_exclude,
                                                                   *(n for n in order[:k] if n not in excluded)])
            path = quantize(timing_config(trial_cfg), calib, Path(work) / f"prefix{k}.onnx")
            trials.append((k, est, trial_cfg, path))
        report(progress, "float islands: timing a candidate", len(candidates), len(candidates))
        ms = time_side_by_side([all_int8, *(t[3] for t in trials)], x, threads)
    rows = [{"float_prefix": k, "nodes": order[:k], "estimated_saving_ms": round(est, 4), "ms": round(m, 4)}
            for (k, est, *_), m in zip(trials, ms[1:])]
    info = {"all_int8_ms": round(ms[0], 4), "candidates": rows, "min_gain": cfg.float_islands_min_gain}
    best = min(range(len(trials)), key=lambda i: ms[i + 1])
    if ms[best + 1] > ms[0] * (1 - cfg.float_islands_min_gain):
        info.update(chosen=None, why=f"no float prefix is {cfg.float_islands_min_gain:.0%} faster than all-int8 "
                                     f"end to end ({ms[best + 1]:.3f} against {ms[0]:.3f} ms)")
        return cfg, info
    k, _, chosen_cfg, _ = trials[best]
    info.update(chosen=order[:k], speedup=round(ms[0] / ms[best + 1], 3),
                why=f"{k} leading layer(s) in float: {ms[best + 1]:.3f} against {ms[0]:.3f} ms all-int8")
    return chosen_cfg, info


__all__ = ["choose_float_islands", "node_ms", "prefix_candidates", "quantizable_order", "time_side_by_side",
           "timing_config", "try_prefixes", "weight_shares"]
