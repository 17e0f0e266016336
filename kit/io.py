"""Several inputs, several outputs: the one place that knows how a model's tensors are spelled.

Rules every stage follows (single input / single output stays plain ndarray in, ndarray out):
- inputs: one input is an ndarray (N x ...); several inputs are a tuple of ndarrays with the same
  N, in the order of the model's forward() arguments. A batch of several inputs is such a tuple.
- outputs: a model may return a tensor or a nested tuple/list/dict of tensors. Its leaves, in
  torch.utils._pytree order, are its outputs; each is named by its path: dict keys by name,
  tuple/list positions by index, nested levels joined by "." (`(logits, {"mask": m, "score": s})`
  -> "0", "1.mask", "1.score"). A bare tensor is named "output". One leaf is returned as an
  ndarray; several as `Outputs` (a list of ndarrays carrying `.names`).
"""

from __future__ import annotations

import inspect

import numpy as np

SINGLE_OUTPUT = "output"


class Outputs(list):
    """Several outputs of one model (flattened leaves, fixed order), with their names (or None)."""

    def __init__(self, arrays=(), names=None):
        super().__init__(arrays)
        self.names = list(names) if names is not None else None


def is_multi(x) -> bool:
    """True for several inputs (a tuple/list of arrays) or several outputs (an Outputs/list)."""
    return isinstance(x, (tuple, list))


def n_samples(x) -> int:
    return len(x[0]) if is_multi(x) else len(x)


def take(x, start: int | None, stop: int | None):
    """Samples start:stop of one input array or of every input of a tuple."""
    return tuple(a[start:stop] for a in x) if is_multi(x) else x[start:stop]


def head(x, n: int | None):
    return x if n is None else take(x, 0, n)


def as_tuple(x) -> tuple:
    return tuple(x) if is_multi(x) else (x,)


def sample_shapes(x) -> list[tuple[int, ...]]:
    """Batch-of-one shape of every input, e.g. [(1, 3, 32, 32), (1, 1, 32, 32)]."""
    return [(1, *np.shape(a)[1:]) for a in as_tuple(x)]


def to_torch(x) -> tuple:
    """numpy input(s) -> a tuple of torch tensors to call a module with (`module(*to_torch(x))`)."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in as_tuple(x))


def _key_name(key) -> str:
    for attr in ("key", "idx", "name"):  # MappingKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten_outputs(obj) -> list[tuple[str, object]]:
    """[(name, leaf)] of a model output (tensor, ndarray, nested tuple/list/dict), pytree order."""
    from torch.utils._pytree import tree_flatten_with_path

    leaves, _ = tree_flatten_with_path(obj)
    return [(".".join(_key_name(k) for k in path) or SINGLE_OUTPUT, leaf) for path, leaf in leaves]


def to_numpy_outputs(obj):
    """A model's output as the kit passes it on: one ndarray, or Outputs for several leaves."""
    flat = flatten_outputs(obj)
    arrays = [leaf.detach().numpy() if hasattr(leaf, "detach") else np.asarray(leaf) for _, leaf in flat]
    if len(arrays) == 1:
        return arrays[0]
    return Outputs(arrays, [name for name, _ in flat])


def output_names(model, example) -> list[str]:
    """Names of `model`'s outputs (see the module doc) from one run on `example` (input(s), numpy or torch)."""
    import torch

    args = example if isinstance(example, tuple) and all(torch.is_tensor(a) for a in example) else to_torch(example)
    module = getattr(model, "module", model)
    with torch.no_grad():
        out = module(*args)
    return [name for name, _ in flatten_outputs(out)]


def input_names(model, count: int) -> list[str]:
    """The forward() argument names of `model` for `count` inputs ("input" for one; "input_<i>"
    where the signature does not tell)."""
    if count == 1:
        return ["input"]
    try:
        params = [p.name for p in inspect.signature(getattr(model, "forward", model)).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = params[:count] if len(params) >= count else []
    return names or [f"input_{i}" for i in range(count)]


def concat(batches: list):
    """Per-batch outputs -> outputs over all samples (ndarray, or Outputs output by output)."""
    first = batches[0]
    if isinstance(first, (list, tuple)):
        return Outputs([np.concatenate([np.asarray(b[j]) for b in batches]) for j in range(len(first))],
                       getattr(first, "names", None))
    return np.concatenate([np.asarray(b) for b in batches])


def names_of(outputs, count: int) -> list[str]:
    names = getattr(outputs, "names", None)
    return list(names) if names and len(names) == count else [f"output_{j}" for j in range(count)]
