"""The recipe schema: what one YAML file in recipes/ may say, checked by pydantic.

A recipe names the kind of device it is for, the runtime and file format, the input shape, the
thread count, the compression chain, the budgets and the bench settings. Unknown keys are refused
so a typo never silently falls back to a default.

`compress` keeps the steps as written ({"method": NAME, **params}); they are parsed once, here,
through the discriminated union of kit.compress.registry, and the config objects are
`recipe.steps`. A bad step raises kit.compress.registry.StepError (the loader adds file:line).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from kit.compress.base import RUNTIMES, Pass  # noqa: F401  (RUNTIMES: re-exported by kit.recipes)
from kit.compress.registry import parse_chain
from kit.tasks.spec import Task

FORMATS_BY_RUNTIME = {"executorch": ("pte",), "onnxruntime": ("onnx", "ort")}
# Device kinds the shipped recipes target; a user may name others (the inventory's `kind`).
KNOWN_DEVICES = ("raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "android-arm64", "x86-64")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PreprocessSpec(_Strict):
    """`input.preprocess` as a mapping (a bare preset name is read as {preset: NAME}); the fields
    of kit.preprocess.Preprocess, unset ones taking its defaults (or the preset's mean/std)."""

    preset: Literal["none", "imagenet", "inception"] | None = Field(None, description="Named mean/std.")
    mean: list[float] | None = Field(None, min_length=1, max_length=4, description="Per-channel mean.")
    std: list[float] | None = Field(None, min_length=1, max_length=4, description="Per-channel std.")
    resize: Literal["resize", "shorter_crop"] | None = Field(None, description="Resize policy.")
    crop_fraction: float | None = Field(None, gt=0, le=1, description="shorter_crop: the centre crop's share.")
    channel_order: Literal["rgb", "bgr"] | None = None
    value_range: tuple[float, float] | None = Field(None, description="[0, 1] pixels are scaled to this first.")

    @model_validator(mode="after")
    def _consistent(self):
        from kit.errors import EdgeKitError
        from kit.preprocess import Preprocess

        try:
            Preprocess.from_spec(self.model_dump(exclude_none=True))
        except EdgeKitError as e:
            raise ValueError(str(e).removeprefix("preprocess").lstrip(": ")) from None
        return self

    def to_preprocess(self):
        from kit.preprocess import Preprocess

        return Preprocess.from_spec(self.model_dump(exclude_none=True))


class InputSpec(_Strict):
    # None means "as the data set comes" (the digits load at 32x32, one channel).
    image_size: int | None = Field(None, ge=8, le=1024, description="Square input side in pixels.")
    channels: int | None = Field(None, ge=1, le=4, description="Input channels (1 for digits, 3 for RGB).")
    preprocess: PreprocessSpec | None = Field(
        None, description="How inputs are resized and normalised: a preset (imagenet, inception, none) or a mapping.")

    @field_validator("preprocess", mode="before")
    @classmethod
    def _preset_name(cls, value):
        return {"preset": value} if isinstance(value, str) else value

    def preprocessing(self):
        """The kit.preprocess.Preprocess this recipe names, or None when it says nothing."""
        return None if self.preprocess is None else self.preprocess.to_preprocess()


class Budget(_Strict):
    """What the gate (kit.compress.gate) judges, each in its own unit. With labels the top-1 drop
    applies (and the agreement/SQNR floors when given); without labels the floors; a top1_drop
    alone on unlabelled data is read as an agreement floor of (100 - drop)%, and the gate says so."""

    top1_drop: float | None = Field(1.0, ge=0, le=100, description="Max top-1 drop in points vs the original model (needs labels).")
    agreement: float | None = Field(None, ge=0, le=1, description="Floor on the share (0..1) of inputs whose top-1 equals the original's.")
    sqnr_db: float | None = Field(None, description="Floor on the output SQNR vs the original model, dB.")
    metric: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
                               description="User metric pkg.module:fn(outputs, labels) -> float, higher is better; replaces top-1.")
    metric_drop: float | None = Field(None, ge=0, description="Max drop of `metric` vs the original, in the metric's own units.")
    latency_ms: float | None = Field(None, gt=0, description="Latency goal (p50 on the device).")
    energy_mj: float | None = Field(None, gt=0, description="Energy goal per inference, when the device has sensors.")

    @model_validator(mode="after")
    def _metric_has_budget(self):
        if self.metric and self.metric_drop is None:
            raise ValueError(f"metric {self.metric} needs metric_drop: the largest drop allowed, in the metric's own "
                             "units (--budget-metric-drop)")
        return self


class BenchSpec(_Strict):
    runs: int = Field(50, ge=1, le=100000)
    warmup: int = Field(5, ge=0, le=10000)


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    base: str | None = None
    device: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Device kind, e.g. raspberry-pi-5.")
    runtime: Literal["executorch", "onnxruntime"]
    format: Literal["pte", "onnx", "ort"] | None = None
    input: InputSpec = Field(default_factory=InputSpec)
    threads: int = Field(1, ge=1, le=64)
    compress: list[dict[str, Any]] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    task: Task | None = Field(None, description="What the model does (classification, segmentation, detection): its "
                              "postprocess and metric; the metric becomes budget.metric when none is given.")
    bench: BenchSpec = Field(default_factory=BenchSpec)
    # Overrides (`key=value`, as for --set) that shrink the recipe for quick tests: small inputs,
    # one epoch. Applied only when asked for (load_recipe(..., overrides=recipe.smoke)).
    smoke: list[str] = Field(default_factory=list)
    source: str | None = Field(None, description="The file this recipe was loaded from (set by the loader).")
    _steps: list[Pass] = PrivateAttr(default_factory=list)

    @field_validator("format")
    @classmethod
    def _format_matches_runtime(cls, value, info: ValidationInfo):
        runtime = info.data.get("runtime")
        allowed = FORMATS_BY_RUNTIME.get(runtime, ())
        if value is not None and runtime and value not in allowed:
            raise ValueError(f"format {value!r} cannot run on {runtime}; allowed with runtime {runtime}: {', '.join(allowed)}")
        return value

    @model_validator(mode="after")
    def _default_format(self):
        if self.format is None:
            self.format = FORMATS_BY_RUNTIME[self.runtime][0]
        self._steps = parse_chain(self.compress, self.runtime, self.format)
        return self

    @model_validator(mode="after")
    def _task_metric(self):
        """A task without budget.metric: its metric, budget task.metric_drop; a detector's output has
        no top-1, so an inherited agreement floor (argmax of the output rows) is dropped."""
        if self.task is not None and not self.budget.metric:
            update = {"metric": self.task.metric_spec,
                      "metric_drop": self.task.metric_drop if self.budget.metric_drop is None else self.budget.metric_drop}
            if self.task.kind == "detection":
                update["agreement"] = None
            self.budget = self.budget.model_copy(update=update)
        return self

    @property
    def steps(self) -> list[Pass]:
        """The compression chain as config objects (kit.compress.<method>), validated at load."""
        return list(self._steps)

    @property
    def target(self) -> str:
        """The kit.package target this recipe's format needs."""
        return "executorch" if self.runtime == "executorch" else "onnx"

    def with_preprocess(self, pre) -> "Recipe":
        """A copy whose input.preprocess is `pre` (a kit.preprocess.Preprocess): what a run really used."""
        spec = PreprocessSpec.model_validate({k: v for k, v in pre.to_dict().items() if v is not None})
        return self.model_copy(update={"input": self.input.model_copy(update={"preprocess": spec})})

    def summary(self) -> dict:
        """A JSON-able view for listings and reports."""
        return self.model_dump(mode="json", exclude_none=True)


def field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)
