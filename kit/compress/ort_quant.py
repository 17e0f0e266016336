"""Int8 quantization for ONNX Runtime: quantize_static with QDQ, per-channel, calibrated."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data import Dataset
from kit.errors import EdgeKitError


@dataclass
class OrtInt8Static:
    per_channel: bool = True
    calibration: str = "MinMax"  # MinMax | Entropy | Percentile
    max_samples: int = 256


def quantize_onnx(model_path: str | Path, config: OrtInt8Static, calib: Dataset, out_path: str | Path) -> Path:
    """Write an int8 QDQ copy of `model_path` to `out_path`, calibrated on `calib`."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calib is None or len(calib) == 0:
        raise EdgeKitError("calibration set is empty; ORT static int8 needs calibration samples (--data)")
    methods = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy, "Percentile": CalibrationMethod.Percentile}
    if config.calibration not in methods:
        raise EdgeKitError(f"calibration={config.calibration!r}: choose one of {', '.join(methods)}")
    model_path, out_path = Path(model_path), Path(out_path)
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = (xb for xb, _ in calib.batches(1))
            self._left = config.max_samples

        def get_next(self):
            if self._left <= 0:
                return None
            self._left -= 1
            xb = next(self._it, None)
            return None if xb is None else {input_name: np.ascontiguousarray(xb, dtype=np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # quant_pre_process folds constants and infers shapes, which the quantizer needs for Conv/MatMul.
        quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=True)
        tmp_out = out_path.with_suffix(".tmp.onnx")
        quantize_static(str(pre), str(tmp_out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=config.per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[config.calibration])
        tmp_out.replace(out_path)
    return out_path
