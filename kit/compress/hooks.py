"""One no-grad forward pass with temporary module hooks (shape, MAC and latency probes share it)."""

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
