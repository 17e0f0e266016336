"""Loading recipes: YAML with line numbers, `base:` inheritance, `key=value` overrides, validation.

Every error is one line naming the file, the line, the field and the allowed values, e.g.
``recipes/pi5.yaml:7: field 'runtime': Input should be 'executorch' or 'onnxruntime' (got 'tflite')``.

PyYAML's safe_load drops positions, so the loader also composes the node tree and keeps each
key's line (the "marks") beside the data; pydantic's error locations are then looked up there.
"""

from __future__ import annotations

import copy
import os
import typing
from pathlib import Path
from typing import Any, Iterable

import pydantic
import yaml

from kit.config import config_dir
from kit.errors import EdgeKitError
from kit.compress.registry import StepError
from kit.recipes.schema import Recipe

Path_ = tuple  # a field path inside a recipe, e.g. ("compress", 0, "ratio")
Origin = tuple[str, "int | None"]  # (file or "--set ...", line)


def shipped_dir() -> Path:
    """The recipes that come with the kit (the repository's recipes/ folder)."""
    return Path(__file__).resolve().parent.parent.parent / "recipes"


def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up, first match wins: $EDGEKIT_RECIPES (os.pathsep-separated),
    ./recipes, <config dir>/recipes, then the shipped recipes."""
    dirs = [Path(p) for p in os.environ.get("EDGEKIT_RECIPES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "recipes", config_dir() / "recipes", shipped_dir()]
    seen, out = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def available_recipes() -> dict[str, Path]:
    """Recipe name (file stem) -> file, over all recipe folders (earlier folders shadow later ones)."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
                found.setdefault(f.stem, f)
    return found


def find_recipe(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    p = Path(name_or_path)
    candidates = [p] if p.is_absolute() else ([relative_to / p] if relative_to else []) + [p]
    if p.suffix not in (".yaml", ".yml"):
        candidates += [c.with_name(c.name + ".yaml") for c in candidates]
    for c in candidates:
        if c.is_file():
            return c
    name = str(name_or_path)
    if name.endswith((".yaml", ".yml")):
        name = Path(name).stem
    found = available_recipes()
    if name in found:
        return found[name]
    raise EdgeKitError(f"recipe {str(name_or_path)!r}: no such file or shipped recipe; "
                       f"choose one of: {', '.join(sorted(found)) or '(none found)'} (see 'edgekit recipes list')")


# --- YAML with line numbers -------------------------------------------------------------------

def _read_yaml(path: Path) -> tuple[dict, dict[Path_, int]]:
    try:
        text = path.read_text()
    except OSError as e:
        raise EdgeKitError(f"{path}: cannot read recipe ({e.strerror})") from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise EdgeKitError(f"{path}{line}: not valid YAML ({e.problem or e.context}); fix the syntax there") from e
    except yaml.YAMLError as e:
        raise EdgeKitError(f"{path}: not valid YAML ({e})") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EdgeKitError(f"{path}:1: a recipe is a mapping of keys (name, device, runtime, ...), not a {type(data).__name__}")
    marks: dict[Path_, int] = {}
    _walk(node, (), marks, path)
    return data, marks


def _walk(node, here: Path_, marks: dict, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise EdgeKitError(f"{path}:{key_node.start_mark.line + 1}: key {_dotted((*here, key))!r} appears twice; keep one")
            seen.add(key)
            marks[(*here, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*here, key), marks, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            marks[(*here, i)] = item.start_mark.line + 1
            _walk(item, (*here, i), marks, path)


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)


# --- inheritance and overrides ----------------------------------------------------------------

def _merge(base: dict, child: dict) -> dict:
    """Child keys win; nested mappings merge key by key; lists and scalars are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _replace_origins(origins: dict, child: dict, child_marks: dict, file: str) -> None:
    """Positions after a merge: the child's keys point into the child file; a list or scalar the
    child replaced drops the base's positions below it (merged mappings keep the base's other keys)."""
    def value_at(path):
        node: Any = child
        for part in path:
            node = node[part]
        return node

    for path in child_marks:
        if not isinstance(value_at(path), dict):
            for old in [p for p in origins if len(p) > len(path) and p[: len(path)] == path]:
                origins.pop(old)
    for path, line in child_marks.items():
        origins[path] = (file, line)


def _resolve(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict[Path_, Origin]]:
    resolved = path.resolve()
    data, marks = _read_yaml(path)
    data.setdefault("name", path.stem)  # a recipe is named after its file unless it says otherwise
    base_name = data.get("base")
    if base_name is None:
        return data, {p: (str(path), line) for p, line in marks.items()}
    if not isinstance(base_name, str):
        raise EdgeKitError(f"{path}:{marks.get(('base',), 1)}: field 'base': give a recipe name or file, not {base_name!r}")
    try:
        base_path = find_recipe(base_name, relative_to=path.parent)
    except EdgeKitError as e:
        raise EdgeKitError(f"{path}:{marks.get(('base',), 1)}: field 'base': {e}") from None
    if base_path.resolve() in (*chain, resolved):
        cycle = " -> ".join(p.name for p in (*chain, resolved, base_path.resolve()))
        raise EdgeKitError(f"{path}:{marks.get(('base',), 1)}: field 'base': inheritance loops ({cycle}); break the cycle")
    base_data, origins = _resolve(base_path, (*chain, resolved))
    merged = _merge(base_data, data)
    _replace_origins(origins, data, marks, str(path))
    return merged, origins


def parse_override(text: str) -> tuple[Path_, Any]:
    """`compress.0.ratio=0.3` -> (("compress", 0, "ratio"), 0.3); the value is read as YAML."""
    if "=" not in text:
        raise EdgeKitError(f"--set {text!r}: expected key=value, e.g. --set threads=2 or --set compress.0.ratio=0.3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise EdgeKitError(f"--set {text!r}: the key is empty; give a dotted field path such as budget.top1_drop")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return path, value


def _apply_override(data: dict, path: Path_, value: Any, text: str, file: Path) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise EdgeKitError(f"{file}: --set {text}: {_dotted(path[:i])} has {len(node)} items; index {part} is out of range")
            node = node[part]
        elif isinstance(node, dict):
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        else:
            raise EdgeKitError(f"{file}: --set {text}: {_dotted(path[:i])} is a value, not a mapping or list")
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last > len(node):
            raise EdgeKitError(f"{file}: --set {text}: {_dotted(path[:-1])} has {len(node)} items; index {last} is out of range")
        if last == len(node):
            node.append(value)  # one past the end appends a step
        else:
            node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise EdgeKitError(f"{file}: --set {text}: {_dotted(path[:-1])} is a value, not a mapping or list")


# --- errors -----------------------------------------------------------------------------------

def _where(origins: dict[Path_, Origin], loc: Path_, file: Path) -> str:
    for n in range(len(loc), 0, -1):
        origin = origins.get(tuple(loc[:n]))
        if origin is not None:
            src, line = origin
            return f"{src}:{line}" if line else f"{file}: {src}"
    return f"{file}:1"


def _model_at(loc: Path_) -> type[pydantic.BaseModel] | None:
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        # `X | None` (e.g. input.preprocess): the model inside the Optional
        models = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def _explain(err: dict) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = f"; allowed keys: {', '.join(k for k in owner.model_fields if k != 'source')}" if owner else ""
        return f"unknown key {_dotted(loc)!r}{allowed}"
    if kind == "missing":
        owner = _model_at(loc[:-1])
        field = owner.model_fields.get(loc[-1]) if owner else None
        hint = ""
        if loc == ("runtime",):
            hint = "; allowed: executorch, onnxruntime"
        elif field is not None and field.description:
            hint = f" ({field.description})"
        return f"field {_dotted(loc)!r} is missing{hint}"
    if kind == "dict_type" and loc[:1] == ("compress",):
        return f"field {_dotted(loc)!r}: a step must be a mapping like {{method: quantize, per_channel: true}} (got {err.get('input')!r})"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"field {_dotted(loc)!r}: {msg}{shown}"


# --- the public verb ----------------------------------------------------------------------------

def load_recipe(path_or_name: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Load, inherit, override and validate one recipe; raise EdgeKitError naming file:line and field."""
    path = find_recipe(path_or_name)
    data, origins = _resolve(path)
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(data, key, value, text, path)
        for n in range(1, len(key) + 1):
            origins.setdefault(key[:n], (f"--set {text}", None))
        origins[key] = (f"--set {text}", None)
        for old in [p for p in origins if p[: len(key)] == key and len(p) > len(key)]:
            origins.pop(old)
    data["source"] = str(path)
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        raise EdgeKitError(f"{_where(origins, tuple(err['loc']), path)}: {_explain(err)}") from None
    except StepError as e:
        here = ("compress", e.index, *e.loc)
        raise EdgeKitError(f"{_where(origins, here, path)}: step {e.index + 1} ({_dotted(here)}): {e.detail}") from None
    return recipe


def list_recipes() -> list[tuple[str, Path, Recipe | EdgeKitError]]:
    """Every recipe found, loaded; a recipe that does not load is listed with its error."""
    out = []
    for name, path in sorted(available_recipes().items()):
        try:
            out.append((name, path, load_recipe(path)))
        except EdgeKitError as e:
            out.append((name, path, e))
    return out
