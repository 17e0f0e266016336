"""Int8 quantization for ONNX Runtime: quantize_static (QDQ, per-channel, MinMax/Entropy/Percentile
calibration through a CalibrationDataReader) and quantize_dynamic.

Defaults follow ORT's CPU advice (QDQ, int8 symmetric per-channel weights). Activations default to
"auto": uint8 when the model will run on x86-64, int8 on ARM. Measured on x86-64 (benchmarks/
runtime.py, 2 threads): with int8 activations ORT's CPU provider leaves many Conv nodes as
DequantizeLinear -> float Conv -> QuantizeLinear (15 of 52 in MobileNetV2, 24 of 52 in V3-Small), so the "int8"
model ran 1.2x (MobileNetV2) to 4x (MobileNetV3-Small) SLOWER than fp32; with uint8 activations
every Conv fuses and ResNet-18 runs 3x faster than fp32. On ARM, ORT's s8s8 kernels are the fast
path (SDOT), so ARM keeps int8. DESIGN.md's held-out
lesson: symmetric per-channel MinMax can be poor on real weights; `weight_symmetric=False`,
16-bit activations (`activation_type="uint16"`) or `nodes_to_exclude` recover it. Measure SQNR.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from kit.compress.base import Pass, StepContext, StepResult
from kit.compress.checks import check_finite
from kit.compress.ort_calibration import calibration_reader, graph_input_name, quantize_best
from kit.data import Dataset
from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

CALIBRATIONS = ("auto", "MinMax", "Entropy", "Percentile")  # auto/Percentile: kit.compress.ort_calibration
QTYPES = ("int8", "uint8", "int16", "uint16")
X86_ARCHES = ("x86_64", "amd64", "x86-64", "i686", "x86")


def auto_activation_type(target_arch: str | None = None) -> str:
    """ORT activation type for the CPU the model will run on (host CPU when not named)."""
    import platform

    arch = (target_arch or platform.machine()).lower()
    return "uint8" if arch in X86_ARCHES else "int8"


def host_has_vnni() -> bool:
    """Whether this host's CPU has VNNI (AVX-512 VNNI or AVX-VNNI), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def resolve_reduce_range(setting, activation: str, weight_type: str, target_arch: str | None = None) -> bool:
    """`reduce_range: auto`: 7-bit weights where ORT's u8s8 kernels would saturate. On x86-64 without
    VNNI, MLAS multiplies uint8 activations by int8 weights with VPMADDUBSW, whose int16 pair sums
    saturate (2 x 255 x 127 > 32767); weights in [-64, 64] cannot (ORT's reduce_range option). Measured
    on an AVX2-only AMD EPYC: MobileNetV2 int8 .onnx agreed 84% with the original with 8-bit weights.
    x86-64 recipes run where they are built, so the host's CPU decides."""
    import platform

    if setting != "auto":
        return bool(setting)
    arch = (target_arch or platform.machine()).lower()
    return arch in X86_ARCHES and activation == "uint8" and weight_type == "int8" and not host_has_vnni()


class _OrtInt8(Pass):
    """Facts and the chain step shared by ORT static and dynamic int8: the float model is exported
    to ONNX in the chain's workdir and the quantized .onnx file is the step's output."""

    runtimes = ("onnxruntime",)
    terminal = True

    def apply(self, model, ctx: StepContext) -> StepResult:
        from kit.compress.int8_share import artifact_share
        from kit.evaluate import file_size
        from kit.package.onnx import export_onnx

        model, info0 = self._prepare_model(model, ctx)
        example = ctx.example if isinstance(ctx.example, tuple) else (ctx.example,)  # several inputs: a tuple
        fp32 = export_onnx(model, example, ctx.workdir / "model-fp32.onnx")
        cfg, info = self._quantize_file(fp32, ctx)
        info = {**info0, **info, "fp32_onnx_bytes": file_size(fp32)}
        info.update(artifact_share(ctx.workdir / "model-int8.onnx"))
        return StepResult(ctx.workdir / "model-int8.onnx", info, cfg)

    def _prepare_model(self, model, ctx: StepContext):
        return model, {}


@dataclass
class OrtInt8Static(_OrtInt8):
    needs_calibration = True

    per_channel: bool = True
    # auto: percentiles 99.9/99.99/99.999 and min/max from one calibration, best output SQNR on
    # calibration inputs wins (kit.compress.ort_calibration) | Percentile | MinMax | Entropy
    calibration: str = "auto"
    max_samples: int = 256
    percentile: float = 99.99  # for calibration=Percentile: (100-p)% cut on each side, as for PT2E
    # auto: after one percentile for all, each activation's own by the int8 output (kit.compress.ort_range_search)
    range_search: Literal["per_tensor", "none"] = "per_tensor"
    range_search_seconds: float = 300.0  # cap on that search (the best choice so far is kept)
    bias_correction: bool = True  # weights on their int8 grid + bias correction, in torch before export
    correction_samples: int = 64
    rounding: Literal["gptq", "nearest"] = "gptq"  # as quantize's: gptq (default) | nearest (kit.compress.gptq_rounding)
    activation_type: str = "auto"  # auto (uint8 on x86-64, int8 on ARM) | int8 | uint8 | int16 | uint16
    weight_type: str = "int8"  # int8 | uint8
    weight_symmetric: bool = True
    # 7-bit weights ([-64, 64]): auto = on x86-64 CPUs without VNNI, where 8-bit u8s8 products saturate
    reduce_range: bool | Literal["auto"] = "auto"
    nodes_to_exclude: list[str] = field(default_factory=list)  # ONNX node names kept in float
    # chain: keep this many most sensitive nodes in float (ORT sensitivity scan), or `auto`: the fewest
    # nodes in float until the targets hold on held-out calibration inputs (kit.compress.mixed_precision)
    keep_float: int | Literal["auto"] = 0
    min_int8_macs: float = 0.95  # auto: never less than this share of the MACs in int8
    target_sqnr_db: float | None = 18.0  # auto: output SQNR to reach on the held-out inputs
    target_agreement: float | None = 0.90  # auto: top-1 agreement to reach on the held-out inputs
    holdout: int = 16  # auto: calibration inputs held out (not calibrated on) to check each candidate
    max_keep_float: int = 8  # auto: at most this many nodes in float
    max_trials: int = 12  # auto: at most this many re-quantizations
    # auto: keep in float the leading layers where int8 is slower on this host, when that is faster end
    # to end (kit.compress.float_islands: measured with ORT's profiler at float_islands_threads)
    float_islands: Literal["auto", "none"] = "none"
    float_islands_threads: int = 1
    float_islands_min_gain: float = 0.02  # a float prefix must beat all-int8 by this share
    float_islands_max_weight_share: float = 0.05  # and hold at most this share of the weights (size)
    method: Literal["ort_quantize"] = "ort_quantize"

    def __post_init__(self):
        from kit.compress.mixed_precision import check_settings

        check_settings("ort_quantize", self.keep_float, self.min_int8_macs, self.holdout, self.max_keep_float)
        if self.calibration not in CALIBRATIONS:
            raise EdgeKitError(f"calibration={self.calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
        for name, value, allowed in (("activation_type", self.activation_type, ("auto",) + QTYPES),
                                     ("weight_type", self.weight_type, QTYPES[:2])):
            if value not in allowed:
                raise EdgeKitError(f"ort_quantize {name}={value!r}: choose one of {', '.join(allowed)}")
        from kit.compress.gptq_rounding import check_rounding

        check_rounding("ort_quantize", self.rounding)
        if self.range_search not in ("per_tensor", "none"):
            raise EdgeKitError(f"ort_quantize range_search={self.range_search!r}: choose per_tensor or none")
        if (self.float_islands not in ("auto", "none") or self.float_islands_threads < 1
                or self.float_islands_min_gain >= 1 or not 0 <= self.float_islands_max_weight_share <= 1):
            raise EdgeKitError(f"ort_quantize float_islands={self.float_islands!r} float_islands_threads="
                               f"{self.float_islands_threads} float_islands_min_gain={self.float_islands_min_gain} "
                               f"float_islands_max_weight_share={self.float_islands_max_weight_share}: choose auto or "
                               "none, threads >= 1, a min_gain below 1 (0.02: 2% faster), a weight share in [0, 1]")
        if self.reduce_range not in ("auto", True, False):
            raise EdgeKitError(f"ort_quantize reduce_range={self.reduce_range!r}: choose auto, true or false")
        if self.max_samples < 1:
            raise EdgeKitError(f"ort_quantize max_samples={self.max_samples}: must be >= 1")
        if not 50.0 < self.percentile <= 100.0:
            raise EdgeKitError(f"ort_quantize percentile={self.percentile}: give a value in (50, 100], e.g. 99.99")

    def weight_qmax(self) -> int:
        """The weights' grid on this host: [-64, 64] with reduce_range, else [-127, 127]."""
        activation = auto_activation_type() if self.activation_type == "auto" else self.activation_type
        return 64 if resolve_reduce_range(self.reduce_range, activation, self.weight_type) else 127

    def _prepare_model(self, model, ctx: StepContext):
        if not self.bias_correction:
            return model, {}
        if not self.per_channel:
            return model, {"weight_correction": "skipped: per-tensor weights (a folded BatchNorm moves them off their grid)"}
        from kit.compress.weight_correction import correct_weights

        if ctx.splits.calib.multi_input:  # kit.compress.weight_correction feeds one input tensor
            return model, {"weight_correction": "skipped: a model with several inputs"}
        check_finite(ctx.splits.calib, "calibration data", self.max_samples)
        calib = ctx.splits.calib
        if self.keep_float == "auto":  # the held-out inputs judge the candidates: never corrected on
            from kit.compress.mixed_precision import split_holdout

            calib = split_holdout(calib, self.holdout, "ort_quantize")[0]
        corrected, info = correct_weights(model, calib, per_channel=self.per_channel,
                                          max_samples=self.correction_samples, rounding=self.rounding, qmax=self.weight_qmax())
        return corrected, {"weight_correction": info}

    def _quantize_file(self, fp32: Path, ctx: StepContext) -> tuple[Pass, dict]:
        pre = preprocess(fp32, ctx.workdir / "model-fp32-pre.onnx")
        cfg, info = self, {}
        if cfg.float_islands == "auto" and not ctx.splits.calib.multi_input:
            from kit.compress.float_islands import choose_float_islands

            cfg, info["float_islands"] = choose_float_islands(pre, cfg, ctx.splits.calib,
                                                              partial(quantize_onnx, pre, preprocessed=True), ctx.progress)
        elif cfg.float_islands == "auto":
            info["float_islands"] = {"chosen": None, "why": "not measured: a model with several inputs"}
        if cfg.keep_float and cfg.keep_float != "auto":
            from kit.compress.sensitivity import most_sensitive

            rows = ort_sensitivity(pre, ctx.splits.calib, ctx.eval_data, config=cfg, progress=ctx.progress)
            info["sensitivity"] = rows
            cfg = dataclasses.replace(cfg, nodes_to_exclude=[*cfg.nodes_to_exclude, *most_sensitive(rows, cfg.keep_float)])
        out = ctx.workdir / "model-int8.onnx"
        if cfg.keep_float == "auto":  # accuracy-aware mixed precision on held-out calibration inputs
            from kit.compress.mixed_precision import ort_auto

            cfg, info["mixed_precision"], ranges = ort_auto(pre, cfg, ctx.splits.calib, out, partial(_quantize_to, pre),
                                                            ort_sensitivity, ctx.progress)
        else:
            ranges = _quantize_to(pre, cfg, ctx.splits.calib, out, ctx.progress)
        if ranges:
            info["activation_ranges"] = ranges
        info["nodes_to_exclude"] = list(cfg.nodes_to_exclude)
        return cfg, info


def _quantize_to(pre: Path, cfg: OrtInt8Static, calib: Dataset, out: Path, progress=None) -> dict | None:
    """One static quantization of the preprocessed `pre`; the activation ranges chosen, if any."""
    if cfg.calibration in ("auto", "Percentile"):
        _check_nodes(pre, cfg.nodes_to_exclude, "ort_quantize nodes_to_exclude")
        for part in calib.per_input():  # several inputs: each array on its own
            check_finite(part, "calibration data", cfg.max_samples)
        return quantize_best(pre, cfg, calib, out, quantize_onnx, progress=progress)
    quantize_onnx(pre, cfg, calib, out, preprocessed=True)
    return None


@dataclass
class OrtInt8Dynamic(_OrtInt8):
    """Dynamic int8 (weights int8, activations quantized per call) for MatMul/Gemm by default."""

    per_channel: bool = True
    weight_type: str = "int8"
    op_types: list[str] = field(default_factory=lambda: ["MatMul", "Gemm"])
    nodes_to_exclude: list[str] = field(default_factory=list)
    method: Literal["ort_quantize_dynamic"] = "ort_quantize_dynamic"

    def __post_init__(self):
        if self.weight_type not in QTYPES[:2]:
            raise EdgeKitError(f"ort_quantize_dynamic weight_type={self.weight_type!r}: choose int8 or uint8")

    def _quantize_file(self, fp32: Path, ctx: StepContext) -> tuple[Pass, dict]:
        quantize_onnx_dynamic(fp32, self, ctx.workdir / "model-int8.onnx")
        return self, {}


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16, "uint16": QuantType.QUInt16}[name]


def quantizable_nodes(model_path: str | Path, op_types=("Conv", "Gemm", "MatMul")) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in op_types]


def _check_nodes(model_path: Path, names, field_name: str) -> None:
    import onnx

    known = {n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node}
    missing = [n for n in names if n not in known]
    if missing:
        raise EdgeKitError(f"{field_name}: {model_path} has no node named {missing[0]!r} (see onnx.load(...).graph.node names)")


def preprocess(model_path: str | Path, out_path: str | Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # quant_pre_process folds constants and infers shapes, which the quantizer needs for Conv/MatMul.
    quant_pre_process(str(model_path), str(out_path), skip_symbolic_shape=True)
    return Path(out_path)


def quantize_onnx(model_path: str | Path, config: OrtInt8Static, calib: Dataset, out_path: str | Path, *,
                  nodes_to_quantize: list[str] | None = None, calibration_cache: str | Path | None = None,
                  preprocessed: bool = False, target_arch: str | None = None) -> Path:
    """Write a QDQ copy of `model_path` to `out_path`, calibrated on `calib`.

    `target_arch` (e.g. "aarch64", "x86_64"; default: this host) resolves activation_type="auto"."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat
    from onnxruntime.quantization import quantize_static as _quantize_static

    if calib is None or len(calib) == 0:
        raise EdgeKitError("calibration set is empty; ORT static int8 needs calibration samples (--data)")
    if config.calibration not in CALIBRATIONS:
        raise EdgeKitError(f"calibration={config.calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
    model_path, out_path = Path(model_path), Path(out_path)
    if not model_path.is_file():
        raise EdgeKitError(f"model file {model_path}: no such file")
    _check_nodes(model_path, config.nodes_to_exclude, "ort_quantize nodes_to_exclude")
    for part in calib.per_input():  # several inputs: each array on its own
        check_finite(part, "calibration data", config.max_samples)
    if config.calibration == "auto" or (config.calibration == "Percentile" and calibration_cache is None):
        with tempfile.TemporaryDirectory() as tmp:
            pre = model_path if preprocessed else preprocess(model_path, Path(tmp) / "pre.onnx")
            quantize_best(pre, config, calib, out_path, quantize_onnx, nodes_to_quantize=nodes_to_quantize)
        return out_path
    input_name = graph_input_name(model_path)
    activation = config.activation_type
    if activation == "auto":
        activation = auto_activation_type(target_arch)
    extra = {"WeightSymmetric": config.weight_symmetric}
    if config.calibration == "Percentile":
        extra["CalibPercentile"] = 2 * config.percentile - 100  # kit percentile -> ORT two-sided
    with tempfile.TemporaryDirectory() as tmp:
        pre = model_path if preprocessed else preprocess(model_path, Path(tmp) / "pre.onnx")
        tmp_out = out_path.with_name(out_path.stem + ".part.onnx")
        root = logging.getLogger()
        saved_level = root.level
        root.setLevel(max(saved_level, logging.ERROR))  # ORT logs per-node chatter on the root logger; restored below
        try:
            _quantize_static(str(pre), str(tmp_out), calibration_reader(input_name, calib, config.max_samples), quant_format=QuantFormat.QDQ,
                            per_channel=config.per_channel, activation_type=_qtype(activation),
                            weight_type=_qtype(config.weight_type),
                            calibrate_method=getattr(CalibrationMethod, config.calibration),
                            nodes_to_exclude=list(config.nodes_to_exclude) or None, nodes_to_quantize=nodes_to_quantize,
                            extra_options=extra, reduce_range=resolve_reduce_range(config.reduce_range, activation, config.weight_type, target_arch),
                            calibration_cache_path=str(calibration_cache) if calibration_cache else None)
        finally:
            root.setLevel(saved_level)
        tmp_out.replace(out_path)
    return out_path


def quantize_onnx_dynamic(model_path: str | Path, config: OrtInt8Dynamic, out_path: str | Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    model_path, out_path = Path(model_path), Path(out_path)
    if not model_path.is_file():
        raise EdgeKitError(f"model file {model_path}: no such file")
    _check_nodes(model_path, config.nodes_to_exclude, "ort_quantize_dynamic nodes_to_exclude")
    if not quantizable_nodes(model_path, tuple(config.op_types)):
        raise EdgeKitError(f"ort_quantize_dynamic: {model_path.name} has no {'/'.join(config.op_types)} node to quantize; "
                           "use ort_quantize (static) for conv-only models")
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(model_path, Path(tmp) / "pre.onnx")
        tmp_out = out_path.with_name(out_path.stem + ".part.onnx")
        quantize_dynamic(str(pre), str(tmp_out), op_types_to_quantize=list(config.op_types), per_channel=config.per_channel,
                         weight_type=_qtype(config.weight_type), nodes_to_exclude=list(config.nodes_to_exclude) or None)
        tmp_out.replace(out_path)
    return out_path


def ort_sensitivity(onnx_path: str | Path, calib: Dataset, data: Dataset, *, config=None, calib_samples: int = 64,
                    eval_samples: int = 64, progress: ProgressFn = None) -> list[dict]:
    """Rows {layer (ONNX node), type, sqnr_db, top1_match[, top1]} from ORT itself, worst first.
    `onnx_path` should be the preprocessed model the final quantization will use (same node names)."""
    import onnx

    from kit.compress.sensitivity import head, sensitivity_row
    from kit.evaluate import outputs
    from kit.package.onnx import OrtRunner

    config = config or OrtInt8Static()
    # the scan ranks nodes with one MinMax calibration shared through the cache: cheap and stable
    config = dataclasses.replace(config, nodes_to_exclude=[], max_samples=calib_samples, keep_float=0, calibration="MinMax")
    data = head(data, eval_samples)
    nodes = [(n.name, n.op_type) for n in onnx.load(str(onnx_path), load_external_data=False).graph.node
             if n.op_type in ("Conv", "Gemm", "MatMul")]
    if not nodes:
        raise EdgeKitError(f"sensitivity: {onnx_path} has no Conv/Gemm/MatMul node to quantize")
    ref = outputs(OrtRunner(onnx_path), data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calibration.json"
        for i, (name, kind) in enumerate(nodes):
            out_path = Path(tmp) / f"q{i}.onnx"
            quantize_onnx(onnx_path, config, calib, out_path, nodes_to_quantize=[name], calibration_cache=cache,
                          preprocessed=True)
            rows.append(sensitivity_row(name, kind, ref, outputs(OrtRunner(out_path), data), data.y))
            report(progress, "ort sensitivity", i + 1, len(nodes))
    rows.sort(key=lambda r: r["sqnr_db"])
    return rows
