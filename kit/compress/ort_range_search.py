"""Per-tensor activation ranges for an ORT QDQ model, each chosen by the whole model's output.

The ORT twin of kit.compress.range_search (why by hand: see there). `calibration: auto` quantizes
with one percentile for every activation (kit.compress.ort_calibration); `range_search:
per_tensor` then revisits the activations one at a time, in graph order, and keeps for each the
candidate range (the same calibration's other percentiles) that gives the best output SQNR on
calibration inputs.

A trial edits the QDQ model instead of re-quantizing it: the activation's scale and zero point
initializers (shared by its QuantizeLinear and DequantizeLinear nodes) get the candidate's values,
computed as ORT's quantizer computes them (quant_utils.compute_scale_zp), and the int32 bias of each
Conv/Gemm that reads the activation is re-quantized to its new scale (input scale x weight scale,
as ORT quantizes biases), from the float bias the quantizer stored. The trial is then one ORT
session on the edited bytes: what is scored is the artifact. Activations that pass through a data
movement op (Reshape, MaxPool, ...) keep their range: ORT removes the Q/DQ pair around such an op
only while both sides share one scale.
"""

from __future__ import annotations

import time

import numpy as np

from kit.progress import ProgressFn, report

MIN_GAIN_DB = 0.02
MOVERS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Resize", "Slice", "Gather",
          "Split", "Pad", "Identity", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"}


class _QdqGraph:
    """The QDQ model's activation quantization parameters and the biases that depend on them."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model, g = model, model.graph
        self.inits = {i.name: i for i in g.initializer}
        producer = {o: n for n in g.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        self.acts: dict[str, tuple[str, str]] = {}  # activation -> (scale init, zero point init)
        for q in g.node:
            if q.op_type != "QuantizeLinear" or q.input[0] in self.inits or len(q.input) < 3:
                continue
            src = producer.get(q.input[0])
            users = [c for d in consumers.get(q.output[0], []) for c in consumers.get(d.output[0], [])]
            if (src is not None and src.op_type in MOVERS) or any(c.op_type in MOVERS for c in users):
                continue
            if q.input[1] in self.inits and q.input[2] in self.inits:
                self.acts[q.input[0]] = (q.input[1], q.input[2])
        self.biases: dict[str, list[tuple[str, str, np.ndarray, np.ndarray]]] = {}  # act -> (int32 init, scale init, float bias, w scale)
        for n in g.node:
            if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3:
                continue
            dq_x, dq_w, dq_b = (producer.get(i) for i in n.input[:3])
            if not all(d is not None and d.op_type == "DequantizeLinear" for d in (dq_x, dq_w, dq_b)):
                continue
            q = producer.get(dq_x.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in self.acts:
                continue
            b_int, b_scale, w_scale = (self.inits.get(name) for name in (dq_b.input[0], dq_b.input[1], dq_w.input[1]))
            if b_int is None or b_scale is None or w_scale is None:
                continue
            b_float = numpy_helper.to_array(b_int).astype(np.float64) * numpy_helper.to_array(b_scale).astype(np.float64)
            self.biases.setdefault(q.input[0], []).append(
                (b_int.name, b_scale.name, b_float, numpy_helper.to_array(w_scale).astype(np.float64)))

    def qparams(self, act: str, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
        from onnx import numpy_helper
        from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

        zp_init = self.inits[self.acts[act][1]]
        qmin, qmax = get_qmin_qmax_for_qType(zp_init.data_type)
        zero, scale = compute_scale_zp(np.array(min(lo, 0.0), np.float32), np.array(max(hi, 0.0), np.float32),
                                       qmin, qmax, symmetric=False)
        dtype = numpy_helper.to_array(zp_init).dtype
        return np.asarray(scale, np.float32).reshape(()), np.asarray(zero).astype(dtype).reshape(())

    def current(self, act: str) -> tuple[np.ndarray, np.ndarray]:
        from onnx import numpy_helper

        s, z = self.acts[act]
        return numpy_helper.to_array(self.inits[s]).copy(), numpy_helper.to_array(self.inits[z]).copy()

    def set(self, act: str, scale: np.ndarray, zero: np.ndarray) -> None:
        s, z = self.acts[act]
        self._put(s, np.asarray(scale, np.float32).reshape(self.inits[s].dims))
        self._put(z, np.asarray(zero).reshape(self.inits[z].dims))
        for b_int, b_scale, b_float, w_scale in self.biases.get(act, []):
            new_scale = (float(scale) * w_scale).astype(np.float32)
            q = np.clip(np.round(b_float / np.maximum(new_scale, 1e-30)), -2**31, 2**31 - 1).astype(np.int32)
            self._put(b_int, q)
            self._put(b_scale, new_scale.reshape(self.inits[b_scale].dims))

    def _put(self, name: str, arr: np.ndarray) -> None:
        from onnx import numpy_helper

        new = numpy_helper.from_array(arr, name)
        self.inits[name].CopyFrom(new)


def refine_onnx_ranges(model_path, ranges: list[tuple[str, dict]], chosen: str, x: np.ndarray, reference: np.ndarray,
                       *, max_seconds: float = 300.0, progress: ProgressFn = None) -> dict:
    """Edit the QDQ model at `model_path` in place: each activation gets, among `ranges` (label ->
    {activation: (low, high)}, one per candidate; `chosen` is the label the model was quantized
    with), the range with the best output SQNR against `reference` on inputs `x` (one input)."""
    import onnx
    import onnxruntime as ort

    from kit.evaluate import sqnr_db

    model = onnx.load(str(model_path))
    graph = _QdqGraph(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    def score() -> float:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        out = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
        return float(sqnr_db(reference, out))

    todo = [a for a in graph.acts if all(a in r for _, r in ranges)]
    start, moved, stopped = time.monotonic(), [], False
    base = before = score()
    for i, act in enumerate(todo):
        if time.monotonic() - start > max_seconds:
            stopped = True
            break
        report(progress, "per-tensor activation ranges", i, len(todo))
        was = graph.current(act)
        best = (base, chosen, was)
        for label, r in ranges:
            if label == chosen:
                continue
            qp = graph.qparams(act, float(np.min(r[act][0])), float(np.max(r[act][1])))
            if np.allclose(qp[0], was[0]) and qp[1] == was[1]:
                continue
            graph.set(act, *qp)
            got = score()
            if got > best[0] + MIN_GAIN_DB:
                best = (got, label, qp)
        graph.set(act, *best[2])
        if best[1] != chosen:
            moved.append({"activation": act, "range": best[1], "gain_db": round(best[0] - base, 2)})
        base = best[0]
    report(progress, "per-tensor activation ranges", len(todo), len(todo))
    onnx.save(model, str(model_path))
    return {"activations": len(todo), "moved": len(moved), "moves": moved[:12],
            "score_sqnr_db": [round(before, 2), round(base, 2)], "seconds": round(time.monotonic() - start, 1),
            "stopped_at_time_cap": stopped, "candidates": [label for label, _ in ranges]}
