"""What every compression pass shares: its facts as class attributes, the context it runs in and
what it returns. Torch-free, so recipes can be validated without loading torch.

A pass is a config dataclass deriving from `Pass` with a `method: Literal["name"]` field (the
recipe's discriminator) and `apply(model, ctx) -> StepResult`; kit.compress.registry lists them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from kit.progress import ProgressFn

RUNTIMES = ("executorch", "onnxruntime")


class Pass:
    """Base of the config dataclasses. Subclasses override the facts below."""

    # pydantic validates the dataclass fields and refuses unknown keys (a typo is never a default).
    __pydantic_config__ = ConfigDict(extra="forbid")
    method: str
    runtimes: tuple[str, ...] = RUNTIMES  # runtimes that can run what this pass makes
    terminal: bool = False  # the output is no longer a float nn.Module: nothing may follow
    needs_calibration: bool = False  # needs samples in splits.calib

    def apply(self, model, ctx: "StepContext") -> "StepResult":
        raise NotImplementedError

    def params(self) -> dict:
        """The parameters as given to the pass (the report's `params`): every field but `method`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "method"}


@dataclass
class StepContext:
    """What a pass may use besides the model it transforms."""

    splits: Any  # kit.data.Splits
    example: Any  # a zero input tensor of the model's input shape (batch 1)
    eval_data: Any  # kit.data.Dataset the chain evaluates on
    original: Any  # the model the chain started from (the default teacher)
    teacher: Any = None
    workdir: Path | None = None
    progress: ProgressFn = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits.input_shape)


@dataclass
class StepResult:
    model: Any  # nn.Module | QuantizedModel | Path (an .onnx file)
    info: dict = field(default_factory=dict)
    config: Pass | None = None  # the config as applied, when the pass extended it (keep_float adds layers)
