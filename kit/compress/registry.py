"""The registered compression passes and the one validator of a compression chain.

METHODS maps a recipe's `method` to its config class; a step {"method": NAME, **params} is parsed
through a pydantic discriminated union of those classes. `parse_chain` is used by the recipe
schema (once, at load) and by run_chain for steps given as dicts. Torch-free.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Any, Union

import pydantic

from kit.compress.base import RUNTIMES, Pass
from kit.compress.cluster import Cluster
from kit.compress.distill import Distill
from kit.compress.lowrank import LowRank
from kit.compress.ort_quant import OrtInt8Dynamic, OrtInt8Static
from kit.compress.prune import Prune
from kit.compress.qat import QAT
from kit.compress.quantize import Int8Dynamic, Int8Static
from kit.compress.structured import PruneStructured
from kit.errors import EdgeKitError

_PASSES = (Prune, PruneStructured, Distill, LowRank, Cluster, Int8Static, Int8Dynamic, QAT, OrtInt8Static, OrtInt8Dynamic)
METHODS: dict[str, type[Pass]] = {cls.__dataclass_fields__["method"].default: cls for cls in _PASSES}
TERMINAL = {name: cls.runtimes[0] for name, cls in METHODS.items() if cls.terminal}


class StepError(EdgeKitError):
    """One bad compression step: `index` (0-based), `loc` (the field path inside the step), `detail`."""

    def __init__(self, index: int, loc: tuple, detail: str):
        self.index, self.loc, self.detail = index, tuple(loc), detail
        where = ".".join(str(p) for p in ("compress", index, *loc))
        super().__init__(f"compress step {index + 1} ({where}): {detail}")


@functools.cache
def _adapter() -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(Annotated[Union[_PASSES], pydantic.Field(discriminator="method")])


def _fields_at(cls: type, loc: tuple) -> list[str]:
    """Field names of the (nested) config dataclass at `loc` inside `cls`."""
    for part in loc:
        hint = typing.get_type_hints(cls).get(part)
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            break
        cls = hint
    return sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name != "method")


def parse_step(step: Any, index: int = 0) -> Pass:
    """One step (a dict or an already built config) -> its config; StepError names what is wrong."""
    if isinstance(step, Pass):
        return step
    allowed = ", ".join(sorted(METHODS))
    if not isinstance(step, dict):
        raise StepError(index, (), f"a step must be a mapping like {{method: quantize, ...}}, not {type(step).__name__}")
    name = step.get("method")
    if name is None:
        raise StepError(index, (), f"step has no 'method'; allowed: {allowed}")
    if name not in METHODS:
        raise StepError(index, ("method",), f"unknown method {name!r}; allowed: {allowed}")
    try:
        return _adapter().validate_python(step)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])[1:]  # drop the union tag
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            known = _fields_at(METHODS[name], loc[:-1])
            raise StepError(index, loc, f"method {name!r} has no parameter {loc[-1]!r}; allowed: {', '.join(known)}") from None
        raise StepError(index, loc, f"method {name!r}: {err['msg'].removeprefix('Value error, ')}") from None
    except (EdgeKitError, TypeError, ValueError) as e:  # a range check in the config's __post_init__
        raise StepError(index, (), f"method {name!r}: {e}") from None


def allowed_for(runtime: str) -> list[str]:
    return sorted(m for m, cls in METHODS.items() if runtime in cls.runtimes)


def parse_chain(steps, runtime: str, fmt: str | None = None) -> list[Pass]:
    """Parse every step and check the chain fits `runtime`: each method's output runs there and a
    terminal method (int8 graph or file) comes last."""
    if runtime not in RUNTIMES:
        raise EdgeKitError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    configs = [parse_step(s, i) for i, s in enumerate(steps)]
    target = f"{runtime} (.{fmt})" if fmt else runtime
    for i, cfg in enumerate(configs):
        if runtime not in cfg.runtimes:
            raise StepError(i, ("method",), f"method {cfg.method!r} produces a model only {' or '.join(cfg.runtimes)} can "
                                            f"run, but this recipe targets {target}; allowed for {runtime}: "
                                            f"{', '.join(allowed_for(runtime))}")
        if cfg.terminal and i != len(configs) - 1:
            raise StepError(i, ("method",), f"method {cfg.method!r} must be the last step (what follows needs a float "
                                            f"model); move {configs[i + 1].method} before it")
    return configs
