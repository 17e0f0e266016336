"""Which files an .onnx model loads besides itself (TensorProto.external_data), and whether a
bundle may let it.

onnx is not on the device, so the few protobuf fields that lead to TensorProto.external_data
are walked by hand (wire format only; tensor payloads are skipped, not read).
"""

from __future__ import annotations

import os
import posixpath

from device_agents.errors import AgentError

_MODEL, _GRAPH, _NODE, _ATTR, _FUNC, _SPARSE, _TENSOR, _TRAINING = range(8)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 25: _FUNC, 20: _TRAINING},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _FUNC: {7: _NODE, 11: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}
_MAX_DEPTH = 64  # graphs nest in attributes; a deeper file is built to exhaust the stack


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview, start: int, end: int):
    """(field number, start, end) of every length-delimited field between start and end."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("truncated field")
            yield field, i, i + n
            i += n
        else:
            raise ValueError(f"wire type {wire}")
    if i != end:
        raise ValueError("truncated message")


def onnx_external_locations(path: str) -> list[str]:
    """Every TensorProto.external_data 'location' in an .onnx file."""
    with open(path, "rb") as f:
        buf = memoryview(f.read())
    found: list[str] = []

    def walk(kind: int, start: int, end: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ValueError("nesting too deep")
        for field, s, e in _fields(buf, start, end):
            if kind == _TENSOR and field == 13:  # StringStringEntryProto {key=1, value=2}
                kv = {f: bytes(buf[a:b]).decode("utf-8", "replace") for f, a, b in _fields(buf, s, e)}
                if kv.get(1) == "location":
                    found.append(kv.get(2, ""))
            elif field in _CHILDREN.get(kind, {}):
                walk(_CHILDREN[kind][field], s, e, depth + 1)

    try:
        walk(_MODEL, 0, len(buf), 0)
    except (ValueError, IndexError) as e:
        raise AgentError("bad_model", f"{os.path.basename(path)} is not a valid ONNX protobuf ({e})")
    return found


def check_external_data(model_path: str, model: str, pinned) -> None:
    """An .onnx model (`model`: its name in the bundle, read from `model_path`) may load external
    data only from inside the bundle and only from files in `pinned` (the manifest's file names)."""
    if not model.endswith(".onnx"):
        return
    base = posixpath.dirname(model)
    for loc in onnx_external_locations(model_path):
        target = posixpath.normpath(posixpath.join(base, loc)) if loc and not loc.startswith("/") else loc
        if not loc or loc.startswith("/") or "\\" in loc or target.startswith("../") or target == "..":
            raise AgentError("external_data_outside",
                             f"{model} loads external tensor data from {loc!r}, outside the bundle; refusing it "
                             f"(re-export with the data inside the model or beside it)")
        if target not in pinned:
            raise AgentError("external_data_unpinned",
                             f"{model} loads external tensor data from {loc!r}, which the signed manifest does not pin")
