"""Activation ranges for ORT static int8: one histogram calibration, several candidate ranges.

ORT's quantize_static calibrates anew on every call and clips graph outputs like any tensor.
Here ORT's own PercentileCalibrater collects the histograms once (asymmetric, since uint8 ReLU
outputs waste half their levels on a symmetric range); each candidate's ranges go to
quantize_static as a calibration cache (so it does not calibrate again), graph outputs keep their
full min/max (a clipped logit ties the top classes), and the candidate with the best output SQNR
on calibration inputs wins.

Percentiles here mean what they mean in kit.compress.observers (PT2E): p keeps values between the
(100-p)th and the p-th percentile, i.e. (100-p)% cut on each side; ORT's CalibPercentile cuts half
of (100-p) per side, so kit p is ORT 2p-100.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np

from kit.data import Dataset

AUTO_PERCENTILES = (99.9, 99.99, 99.999)


def _ort_percentile(p: float) -> float:
    return 2 * p - 100


@contextlib.contextmanager
def quiet_stdout():
    """ORT's calibrators print() their settings; the CLI's stdout carries tables and --json."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def graph_input_name(model_path: str | Path) -> str | list[str]:
    """The graph's input name; a graph with several inputs: the list of names, in order."""
    import onnx

    names = [i.name for i in onnx.load(str(model_path), load_external_data=False).graph.input]
    return names[0] if len(names) == 1 else names


def calibration_reader(input_name: str | list[str], calib: Dataset, max_samples: int):
    """ORT's CalibrationDataReader over the first `max_samples` of `calib`, one sample a call
    (several inputs: `input_name` lists them in order and every input is fed by its name)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = (xb for xb, _ in calib.batches(1))
            self._left = max_samples

        def get_next(self):
            if self._left <= 0:
                return None
            self._left -= 1
            xb = next(self._it, None)
            if xb is None:
                return None
            if isinstance(input_name, list):
                return {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(input_name, xb)}
            return {input_name: np.ascontiguousarray(xb, dtype=np.float32)}

    return Reader()


def _collect(pre: Path, calib: Dataset, max_samples: int, tmp: Path):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(pre, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                   augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Percentile,
                                   extra_options={"symmetric": False, "num_bins": 2048, "percentile": 99.99})
    with quiet_stdout():
        calibrator.collect_data(calibration_reader(graph_input_name(pre), calib, max_samples))
    return calibrator


def _ranges(calibrator, mode: str, percentile: float, outputs: set[str]):
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    collector = calibrator.collector
    collector.percentile = _ort_percentile(percentile if mode == "percentile" else 99.99)
    with quiet_stdout():
        data = calibrator.compute_data()
    for name, hist in collector.histogram_dict.items():
        if mode == "minmax" or name in outputs:
            lo, hi = np.asarray(hist[2], dtype=np.float32), np.asarray(hist[3], dtype=np.float32)
            data.data[name] = TensorData(lowest=np.minimum(lo, 0).astype(np.float32), highest=hi)
    return TensorsData(data.calibration_method, data.data)


def _score(model: Path, x: np.ndarray, ref: np.ndarray) -> float:
    from kit.evaluate import sqnr_db
    from kit.package.onnx import OrtRunner

    run = OrtRunner(model)
    if isinstance(x, tuple):  # several inputs / outputs: kit.io; the worst output's SQNR
        from kit.evaluate import outputs

        return float(sqnr_db(ref, outputs(run, Dataset(x, None), 1)))
    return float(sqnr_db(ref, np.concatenate([run(x[i:i + 1]) for i in range(len(x))])))


def quantize_best(pre: Path, config, calib: Dataset, out_path: Path, quantize, *, nodes_to_quantize=None,
                  score_samples: int = 32, progress=None) -> dict:
    """Quantize `pre` (a preprocessed fp32 .onnx) to `out_path` with the best candidate range.
    `config.calibration` is "auto" (percentiles 99.9 / 99.99 / 99.999 and min/max tried) or
    "Percentile" (only `config.percentile`). `quantize` is kit.compress.ort_quant.quantize_onnx
    (passed in: that module calls this one). With `config.range_search` "per_tensor" each
    activation's range is then chosen on its own (kit.compress.ort_range_search). Returns what was
    tried and chosen."""
    import onnx
    from onnxruntime.quantization.calibrate import save_tensors_data

    from kit.package.onnx import OrtRunner

    pre, out_path = Path(pre), Path(out_path)
    outputs = {o.name for o in onnx.load(str(pre), load_external_data=False).graph.output}
    candidates = ([("percentile", p) for p in AUTO_PERCENTILES] + [("minmax", 0.0)]
                  if config.calibration == "auto" else [("percentile", config.percentile)])
    work = out_path.parent / (out_path.stem + ".calib")
    work.mkdir(parents=True, exist_ok=True)
    try:
        calibrator = _collect(pre, calib, config.max_samples, work)
        ref = OrtRunner(pre)
        if calib.multi_input:
            from kit.evaluate import outputs as run_all

            x = tuple(np.ascontiguousarray(a, dtype=np.float32) for a in calib.head(score_samples).x)
            ref_out = run_all(ref, Dataset(x, None), 1)
        else:
            x = np.ascontiguousarray(calib.x[:score_samples], dtype=np.float32)
            ref_out = np.concatenate([ref(x[i:i + 1]) for i in range(len(x))])
        rows, best, tried = [], None, []
        qcfg = dataclasses.replace(config, calibration="Percentile")
        for i, (mode, pct) in enumerate(candidates):
            cache = work / f"ranges{i}.json"
            data = _ranges(calibrator, mode, pct, outputs)
            tried.append((f"{mode} {pct:g}" if mode == "percentile" else mode,
                          {k: (np.asarray(v.range_value[0]), np.asarray(v.range_value[1])) for k, v in data.data.items()}))
            save_tensors_data(data, cache)
            model = work / f"candidate{i}.onnx"
            with quiet_stdout():
                quantize(pre, qcfg, calib, model, nodes_to_quantize=nodes_to_quantize, calibration_cache=cache,
                              preprocessed=True)
            sq = _score(model, x, ref_out) if len(candidates) > 1 else float("nan")
            rows.append({"observer": mode, "percentile": pct if mode == "percentile" else None,
                         "calib_sqnr_db": round(sq, 2)})
            if best is None or sq > best[0]:
                best = (sq, model, rows[-1], tried[-1][0])
        info = {"chosen": best[2], "candidates": rows, "scored_on": f"{len(Dataset(x, None))} calibration inputs"}
        if len(candidates) > 1 and getattr(config, "range_search", "none") == "per_tensor" and not calib.multi_input:
            from kit.compress.ort_range_search import refine_onnx_ranges

            info["per_tensor"] = refine_onnx_ranges(best[1], tried, best[3], x, ref_out,
                                                    max_seconds=config.range_search_seconds, progress=progress)
        shutil.move(str(best[1]), str(out_path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info
