"""A user's own .onnx file as a model the kit can compress, package and bench: its inputs and
outputs read from the graph (names, shapes, dtypes), dynamic dims pinned with ONNX Runtime's own
tools (`onnxruntime.tools.onnx_model_utils`), and an ORT session as its numpy -> numpy predictor.

`load_onnx_model(path)` refuses a missing, non-ONNX or corrupt file with one line; `pin_dims`
fixes a dynamic batch to 1 (with a note) and dynamic H/W to the recipe's `input.image_size`, and
refuses other dynamic dims naming them; `load_onnx_data` loads --data at the graph's own input
size and checks it against the graph input (an .npz may name its array after the graph input).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kit.errors import EdgeKitError

PINNED = "source-pinned.onnx"  # the copy with pinned dims, beside report.json while a build runs
ONNX_STEPS = ("ort_quantize", "ort_quantize_dynamic")
_TORCH = "give the PyTorch model instead (an nn.Module, torchvision:NAME or module:callable)"
_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


@dataclass
class OnnxModel:
    """One .onnx file: where it is, its sha256, graph inputs/outputs [{name, shape, dtype}] (a
    dynamic dim is its dim_param name, or None when unnamed) and notes on what the kit changed."""

    path: Path
    sha256: str
    inputs: list[dict]
    outputs: list[dict]
    notes: list[str] = field(default_factory=list)
    source: Path | None = None  # the user's file, when `path` is a copy with pinned dims

    @property
    def file(self) -> str:
        """The user's file name (also for a pinned copy), for messages."""
        return Path(self.source or self.path).name

    @property
    def input(self) -> dict:
        return self.inputs[0]

    @property
    def dynamic(self) -> list[tuple[str, int, object]]:
        """(input name, axis, dim) of every input dim that is not a fixed number."""
        return [(i["name"], axis, d) for i in self.inputs for axis, d in enumerate(i["shape"]) if not isinstance(d, int)]

    def predictor(self, threads: int = 1):
        """numpy -> numpy over an ORT session on this file (the first input, the first output)."""
        from kit.package.onnx import OrtRunner

        return OrtRunner(self.path, threads)

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path), "source": str(self.source) if self.source else None}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dims(value_info) -> list:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _io(graph) -> tuple[list[dict], list[dict]]:
    init = {i.name for i in graph.initializer}

    def desc(v):
        return {"name": v.name, "shape": _dims(v), "dtype": _DTYPES.get(v.type.tensor_type.elem_type, "other")}

    return [desc(v) for v in graph.input if v.name not in init], [desc(v) for v in graph.output]


def load_onnx_model(path: str | Path) -> OnnxModel:
    """Read `path`'s graph (inputs, outputs) and check it; one line for a missing, non-ONNX or
    corrupt file."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise EdgeKitError(f"model {path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise EdgeKitError(f"model {path}: not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'cannot parse'}); "
                           "give a file written by torch.onnx.export or onnx.save") from None
    if not model.graph.node:
        raise EdgeKitError(f"model {path}: not an ONNX model (no graph nodes); give a file written by torch.onnx.export or onnx.save")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - the checker raises several types; all mean a broken file
        raise EdgeKitError(f"model {path}: the ONNX checker refuses it ({str(e).splitlines()[0][:160]}); "
                           "re-export it (torch.onnx.export) or repair it") from None
    inputs, outputs = _io(model.graph)
    if not inputs:
        raise EdgeKitError(f"model {path}: the graph has no inputs")
    return OnnxModel(path, _sha256(path), inputs, outputs)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def pin_dims(m: OnnxModel, out_path: str | Path, image_size: int | None = None,
             channels: int | None = None) -> OnnxModel:
    """A copy of `m` at `out_path` whose inputs have fixed shapes: a dynamic batch (axis 0) is
    pinned to 1, dynamic H/W of an NCHW input to `image_size` and a dynamic C to `channels`
    (the recipe's input.image_size / input.channels), each with a note. Any other dynamic dim is
    refused naming it. Without dynamic dims, `m` itself."""
    if not m.dynamic:
        return m
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed, make_input_shape_fixed

    from kit.package.onnx import self_contained_onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(str(self_contained_onnx(m.path, out_path)))  # external data screened and folded in
    try:
        notes = list(m.notes)
        for inp in m.inputs:
            shape = list(inp["shape"])
            wanted = list(shape)
            for axis, d in enumerate(shape):
                if isinstance(d, int):
                    continue
                label = f"'{d}'" if d else "(unnamed)"
                if axis == 0:
                    wanted[0] = 1
                    notes.append(f"input '{inp['name']}': dynamic batch dim {label} pinned to 1 (the kit runs and ships batch 1)")
                elif len(shape) == 4 and axis in (2, 3):
                    if image_size is None:
                        raise EdgeKitError(f"model {m.path}: input '{inp['name']}' {_fmt(shape)} has a dynamic "
                                           f"{'height' if axis == 2 else 'width'} {label}; fix it with --image-size N "
                                           "(or --set input.image_size=N)")
                    wanted[axis] = image_size
                    notes.append(f"input '{inp['name']}': dynamic {'height' if axis == 2 else 'width'} {label} pinned to "
                                 f"{image_size} (input.image_size; change with --image-size N)")
                elif len(shape) == 4 and axis == 1 and channels is not None:
                    wanted[1] = channels
                    notes.append(f"input '{inp['name']}': dynamic channels {label} pinned to {channels} (input.channels)")
                else:
                    raise EdgeKitError(f"model {m.path}: input '{inp['name']}' {_fmt(shape)} has a dynamic dim {label} at "
                                       f"axis {axis} that the kit cannot choose; re-export the model with a fixed size there"
                                       + (" or set input.channels" if axis == 1 and len(shape) == 4 else ""))
            params = {d for d in shape if isinstance(d, str)}
            for axis, d in enumerate(shape):
                if isinstance(d, str) and d in params:
                    make_dim_param_fixed(proto.graph, d, wanted[axis])  # every use of the name, outputs too
                    params.discard(d)
            if any(d is None for d in shape):
                make_input_shape_fixed(proto.graph, inp["name"], wanted)
    except EdgeKitError:
        out_path.unlink(missing_ok=True)
        raise
    fix_output_shapes(proto)
    onnx.save_model(proto, str(out_path))
    inputs, outputs = _io(proto.graph)
    return OnnxModel(out_path, m.sha256, inputs, outputs, notes, m.source or m.path)


def check_input(m: OnnxModel, x: np.ndarray, source: str) -> None:
    """The data's sample shape against the graph input; one line naming the file, the input and
    its shape."""
    inp = m.input
    want = [d if isinstance(d, int) else None for d in inp["shape"][1:]]
    have = list(x.shape[1:])
    if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have)):
        raise EdgeKitError(f"{source}: samples of shape {have} do not fit graph input '{inp['name']}' of {m.file}, "
                           f"which expects {_fmt(inp['shape'])} (batch first); give data of that shape"
                           + (f" ({want[0]} channel(s))" if len(want) == 3 and want[0] is not None and want[0] != have[0] else ""))


def check_supported(m: OnnxModel) -> None:
    """One image-like float input is what compress takes for a user's .onnx today."""
    if len(m.inputs) != 1:
        raise EdgeKitError(f"model {m.path}: {len(m.inputs)} graph inputs ({', '.join(i['name'] for i in m.inputs)}); "
                           "edgekit compress takes single-input .onnx models")
    if m.input["dtype"] != "float32":
        raise EdgeKitError(f"model {m.path}: graph input '{m.input['name']}' is {m.input['dtype']}; the kit feeds float32 "
                           "(re-export with a float32 input)")


def load_onnx_data(m: OnnxModel, spec: str, *, image_size: int | None = None, preprocess=None, seed: int = 0,
                   task=None):
    """--data for `m`: loaded at the graph input's H/W (else `image_size`), checked against its
    shape. An .npz may hold the samples as `x` or under the graph input's name (and labels as `y`).
    With a detection / segmentation `task` (kit.tasks.spec.Task), a folder is read as the PyTorch
    path reads it (kit.tasks.data: COCO / YOLO labels, mask PNGs, or images only)."""
    import tempfile

    from kit.data import load_data

    check_supported(m)
    shape = m.input["shape"]
    size = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else image_size
    path = Path(spec)
    if task is not None and task.kind != "classification" and path.is_dir():
        from kit.tasks.data import load_task_data

        splits = load_task_data(task.kind, path, size, preprocess=preprocess, seed=seed)
        check_input(m, splits.train.x, spec)
        task.params.setdefault("image_size", size)  # the detector's boxes are scaled to pixels by it
        return splits
    if path.suffix == ".npz" and path.is_file():
        name = m.input["name"]
        try:
            with np.load(path) as f:
                names = list(f.files)
                arrays = {k: f[k] for k in (name, "x", "y") if k in names}
        except Exception as e:  # noqa: BLE001 - numpy raises several types for non-npz files
            raise EdgeKitError(f"{path}: cannot read as .npz ({type(e).__name__}); give a file written by numpy.savez") from None
        if name not in arrays and "x" not in arrays:
            raise EdgeKitError(f"{path}: no array named '{name}' (graph input of {m.file}, shape {_fmt(shape)}) "
                               f"or 'x'; it holds {', '.join(names) or 'nothing'}; save the samples as {name}=... "
                               "(labels as y=...)")
        if name in arrays and name != "x":
            with tempfile.TemporaryDirectory() as tmp:
                renamed = Path(tmp) / path.name
                np.savez(renamed, x=arrays[name], **({"y": arrays["y"]} if "y" in arrays else {}))
                splits = load_data(str(renamed), size, seed, preprocess)
            check_input(m, splits.train.x, str(path))
            return splits
    splits = load_data(spec, size, seed, preprocess)
    check_input(m, splits.train.x, spec)
    return splits


def check_recipe(recipe, model: OnnxModel) -> None:
    """What a recipe may do with an .onnx file: ORT only, ORT int8 steps only (one line otherwise)."""
    name = model.file
    if recipe.runtime != "onnxruntime":
        raise EdgeKitError(f"recipe {recipe.name} builds a .{recipe.format} for {recipe.runtime}, and ExecuTorch needs "
                           f"the PyTorch model, not {name}; {_TORCH}, or use an ORT recipe (e.g. x86-64-int8-ort)")
    for i, step in enumerate(recipe.steps):
        if step.method not in ONNX_STEPS:
            raise EdgeKitError(f"recipe {recipe.name}: step {i} ({step.method}) needs the PyTorch model, not {name}; "
                               f"{_TORCH}, or drop the step (steps for an .onnx: {', '.join(ONNX_STEPS)})")


def open_onnx(spec: str, recipe, data: str, preprocess, out_dir: str | Path, *, weights=None, note=None):
    """`edgekit compress model.onnx`: the checked model (dims pinned into out_dir, each change told
    through `note`) and its data; everything refused before any work, one line each."""
    if weights:
        raise EdgeKitError(f"--weights {weights}: {Path(spec).name} is an .onnx file and holds its own weights; drop --weights")
    m = load_onnx_model(spec)
    check_recipe(recipe, m)
    check_supported(m)
    shape = m.input["shape"]
    if m.dynamic:
        m = pin_dims(m, Path(out_dir) / PINNED, recipe.input.image_size, recipe.input.channels)
    if len(shape) == 4 and isinstance(shape[-1], int) and recipe.input.image_size not in (None, shape[-1]):
        m.notes.append(f"input.image_size={recipe.input.image_size} is not used: graph input '{m.input['name']}' is fixed "
                       f"at {_fmt(shape[1:])}; the data is loaded at {shape[-1]}")
    for line in m.notes:
        if note is not None:
            note(f"note: {line}")
    return m, load_onnx_data(m, data, image_size=recipe.input.image_size, preprocess=preprocess, task=recipe.task)
