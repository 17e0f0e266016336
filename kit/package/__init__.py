"""Packaging: a model in, a signed, verifiable bundle for one runtime out (kit.package.packager).

Bundles, signing and verification are light and load at once; the exporters (torch, executorch,
onnx) load on first use, so `edgekit keys`, `edgekit verify` and the trusted-key lookup of a device
never import torch.
"""

from __future__ import annotations

import importlib

from device_agents.protocol import sha256_file
from kit.package.bundle import Bundle, parse_expires, write_bundle
from kit.package.verify import BundleRefused, Verified, verify

_LAZY = {
    "package": "kit.package.packager", "check_request": "kit.package.packager", "runner_for": "kit.package.packager",
    "TARGETS": "kit.package.packager", "FORMATS": "kit.package.packager",
    "DELEGATION_WARN_BELOW": "kit.package.packager",
    "Delegation": "kit.package.executorch", "PteRunner": "kit.package.executorch", "export_pte": "kit.package.executorch",
    "OrtRunner": "kit.package.onnx", "export_onnx": "kit.package.onnx", "self_contained_onnx": "kit.package.onnx",
}

__all__ = ["Bundle", "BundleRefused", "Delegation", "TARGETS", "Verified", "check_request", "export_onnx", "export_pte",
           "package", "parse_expires", "runner_for", "sha256_file", "verify", "write_bundle"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'kit.package' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
