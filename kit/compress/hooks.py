"""No-grad forward passes with temporary module hooks (shape, MAC and latency probes, the weight
correction's means and GPTQ's Hessians share them)."""

from __future__ import annotations


def forward_once(model, example, handles: list) -> None:
    """Run `model` in eval mode on `example` without gradients, then remove the hook `handles`
    (also when the forward fails)."""
    import torch

    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()


def forward_batches(model, x, handles: list, batch_size: int) -> None:
    """Run `model` in eval mode on `x` in batches of `batch_size` without gradients, then remove
    the hook `handles` (also when a forward fails)."""
    import torch

    try:
        with torch.no_grad():
            model.eval()
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
