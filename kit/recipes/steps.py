"""Checking a recipe's compression steps against the compression registry.

Each step is {"method": NAME, **params}; it is valid when kit.compress.chain.METHODS[NAME](**params)
builds (pydantic checks the config dataclass's field types, the dataclass's own __post_init__
checks ranges) and when the method can produce a model for the recipe's runtime.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pydantic

from kit.errors import EdgeKitError

# Which runtime a method's output can run on, for methods kit.compress.chain.TERMINAL does not list
# (a `runtimes` attribute on the config class wins over both).
_EXECUTORCH_ONLY = {"quantize", "quantize_dynamic", "qat"}
_ORT_ONLY = {"ort_quantize", "ort_quantize_dynamic"}


def _terminal() -> dict[str, str]:
    """Methods whose output is no longer an nn.Module -> the one runtime that runs it."""
    try:
        from kit.compress.chain import TERMINAL
    except ImportError:
        return {}
    return dict(TERMINAL)


def methods() -> dict[str, type]:
    """The compression registry (kit.compress.chain.METHODS)."""
    try:
        from kit.compress.chain import METHODS
    except ImportError as e:  # a broken install, not a user error they can fix in the recipe
        raise EdgeKitError(f"kit.compress.chain is not importable ({e}); reinstall edgekit") from e
    return METHODS


def method_runtimes(name: str, cls: type | None = None) -> tuple[str, ...]:
    declared = getattr(cls, "runtimes", None) if cls is not None else None
    if declared:
        return tuple(declared)
    terminal = _terminal()
    if name in terminal:
        return (terminal[name],)
    if name in _EXECUTORCH_ONLY:
        return ("executorch",)
    if name in _ORT_ONLY or name.startswith("ort_"):
        return ("onnxruntime",)
    return ("executorch", "onnxruntime")


def _unknown_keys(cls: type, params: dict, prefix: tuple = ()) -> list[tuple[tuple, list[str]]]:
    """Keys a (nested) config dataclass does not have; pydantic ignores extras on stdlib dataclasses."""
    if not dataclasses.is_dataclass(cls):
        return []
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    try:
        hints = typing.get_type_hints(cls)  # resolves `from __future__ import annotations` strings
    except Exception:
        hints = {}
    bad = []
    for key, value in params.items():
        if key not in fields:
            bad.append(((*prefix, key), sorted(fields)))
            continue
        ftype = hints.get(key, fields[key].type)
        if isinstance(value, dict) and isinstance(ftype, type) and dataclasses.is_dataclass(ftype):
            bad.extend(_unknown_keys(ftype, value, (*prefix, key)))
    return bad


@dataclasses.dataclass
class StepProblem:
    """One problem in a step: where (path inside the recipe) and what."""

    path: tuple
    message: str


def check_step(step: Any, index: int, runtime: str, fmt: str, registry: dict[str, type],
               total: int | None = None) -> StepProblem | None:
    """None when the step is valid, else the first problem found (path relative to the recipe)."""
    here = ("compress", index)
    if not isinstance(step, dict):
        return StepProblem(here, f"a step must be a mapping like {{method: quantize, ...}}, not {type(step).__name__}")
    name = step.get("method")
    if name is None:
        return StepProblem(here, f"step has no 'method'; allowed: {', '.join(sorted(registry))}")
    if name not in registry:
        return StepProblem((*here, "method"), f"unknown method {name!r}; allowed: {', '.join(sorted(registry))}")
    cls = registry[name]
    runtimes = method_runtimes(name, cls)
    if runtime not in runtimes:
        alternatives = sorted(m for m, c in registry.items() if runtime in method_runtimes(m, c))
        return StepProblem((*here, "method"),
                           f"method {name!r} produces a model only {' or '.join(runtimes)} can run, but this recipe targets "
                           f"{runtime} (.{fmt}); allowed for {runtime}: {', '.join(alternatives)}")
    if name in _terminal() and total is not None and index != total - 1:
        return StepProblem((*here, "method"), f"method {name!r} must be the last step (what follows needs a float "
                                              f"model); move it after step {total}")
    params = {k: v for k, v in step.items() if k != "method"}
    unknown = _unknown_keys(cls, params)
    if unknown:
        path, allowed = unknown[0]
        return StepProblem((*here, *path), f"method {name!r} has no parameter {path[-1]!r}; allowed: {', '.join(allowed)}")
    try:
        pydantic.TypeAdapter(cls).validate_python(params)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        return StepProblem((*here, *loc), f"method {name!r}: {msg}")
    except EdgeKitError as e:
        return StepProblem(here, f"method {name!r}: {e}")
    except (TypeError, ValueError) as e:
        return StepProblem(here, f"method {name!r}: {e}")
    return None


def build_step(step: dict) -> tuple[str, Any]:
    """(method name, config object) for a validated step."""
    registry = methods()
    name = step["method"]
    return name, pydantic.TypeAdapter(registry[name]).validate_python({k: v for k, v in step.items() if k != "method"})
