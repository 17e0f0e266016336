"""How a model wants its input: the preprocessing half of the model's contract.

A `Preprocess` is recorded in the recipe (`input.preprocess`), applied by the data loaders, written
into the bundle manifest (`preprocessing`), shown by `edgekit verify` and used for the agent's
reference input, so nobody wraps a model by hand to normalise. Images reach `apply` as float32
NCHW RGB in [0, 1] (or HWC/NHWC uint8) at any size; out come the arrays the model is fed.

Who decides (`resolve`): the CLI's options win over the recipe's `input.preprocess`; when neither
says anything, a `torchvision:NAME` model gets `imagenet` (and the caller is told so); else none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from kit.errors import EdgeKitError

PRESETS: dict[str, dict] = {
    "none": {"mean": None, "std": None},
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},  # torchvision's
    "inception": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},  # TF/timm "inception" models: [-1, 1]
}
RESIZE_POLICIES = ("resize", "shorter_crop")  # plain resize to size x size | shorter side to size/crop_fraction, centre crop
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, ...] | None = None  # per channel, subtracted after scaling to value_range
    std: tuple[float, ...] | None = None
    resize: str = "resize"
    crop_fraction: float = 0.875  # shorter_crop: the centre crop is this share of the resized shorter side
    channel_order: str = "rgb"
    value_range: tuple[float, float] = (0.0, 1.0)  # [0, 1] pixels are scaled to this range first
    preset: str | None = None  # the preset these values came from, for people reading the manifest

    def __post_init__(self):
        if self.resize not in RESIZE_POLICIES:
            raise EdgeKitError(f"preprocess resize {self.resize!r}: choose one of {', '.join(RESIZE_POLICIES)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise EdgeKitError(f"preprocess channel_order {self.channel_order!r}: choose rgb or bgr")
        if (self.mean is None) != (self.std is None):
            raise EdgeKitError("preprocess: give mean and std together (or a preset)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise EdgeKitError(f"preprocess std {list(self.std)}: every value must be > 0")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise EdgeKitError(f"preprocess: mean has {len(self.mean)} values but std has {len(self.std)}")
        if not 0 < self.crop_fraction <= 1:
            raise EdgeKitError(f"preprocess crop_fraction {self.crop_fraction}: must be in (0, 1]")

    @classmethod
    def from_spec(cls, spec: "str | dict | Preprocess | None") -> "Preprocess":
        """A preset name ("imagenet", "inception", "none"), a dict of fields (a `preset` key fills
        mean/std that are not given), a Preprocess, or None (no normalisation)."""
        if spec is None:
            return cls()
        if isinstance(spec, Preprocess):
            return spec
        if isinstance(spec, str):
            spec = {"preset": spec}
        spec = dict(spec)
        preset = spec.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise EdgeKitError(f"preprocess preset {preset!r}: choose one of {', '.join(PRESETS)}")
            for k, v in PRESETS[preset].items():
                spec.setdefault(k, v)
        for k in ("mean", "std", "value_range"):
            if spec.get(k) is not None:
                spec[k] = tuple(float(v) for v in spec[k])
        try:
            return cls(**spec)
        except TypeError as e:
            raise EdgeKitError(f"preprocess: {e}; fields are {', '.join(cls.__dataclass_fields__)}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Channel order, value range and mean/std on float32 NCHW RGB in [0, 1] (no resizing)."""
        x = np.asarray(x, dtype=np.float32)
        if self.channel_order == "bgr":
            x = x[:, ::-1]
        lo, hi = self.value_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        if self.mean is not None:
            if x.shape[1] != len(self.mean):
                raise EdgeKitError(f"preprocess mean/std have {len(self.mean)} channels but the images have {x.shape[1]}")
            mean = np.asarray(self.mean, dtype=np.float32)[None, :, None, None]
            std = np.asarray(self.std, dtype=np.float32)[None, :, None, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    def resize_images(self, x: np.ndarray, size: int | None) -> np.ndarray:
        """float32 NCHW in [0, 1] at size x size, by this policy. `x`: float NCHW (or CHW) in [0, 1],
        or uint8 HWC (or NHWC) 0..255. "resize": plain bilinear resize to size x size (antialiased
        when shrinking); "shorter_crop": the shorter side to floor(size / crop_fraction), then the
        centre size x size crop (torchvision's eval transform: 256 -> 224 at 0.875)."""
        import torch
        import torch.nn.functional as F

        x = np.asarray(x)
        if x.dtype == np.uint8:
            if x.ndim == 3:
                x = x[None]
            if x.ndim != 4:
                raise EdgeKitError(f"preprocess: uint8 images must be HWC or NHWC, got shape {list(x.shape)}")
            x = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        else:
            x = np.asarray(x, dtype=np.float32)
            if x.ndim == 3:
                x = x[None]
            if x.ndim != 4:
                raise EdgeKitError(f"preprocess: float images must be CHW or NCHW, got shape {list(x.shape)}")
        if not size:
            return np.ascontiguousarray(x)
        t = torch.from_numpy(np.ascontiguousarray(x))
        h, w = t.shape[-2:]
        if self.resize == "resize":
            if (h, w) != (size, size):
                t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=min(h, w) > size)
        else:
            from torchvision.transforms.v2 import functional as TF

            short = max(size, math.floor(size / self.crop_fraction + 1e-6))
            if min(h, w) != short:
                t = TF.resize(t, [short], antialias=True)
            t = TF.center_crop(t, [size, size])
        return np.ascontiguousarray(t.numpy(), dtype=np.float32)

    def apply(self, x: np.ndarray, size: int | None = None) -> np.ndarray:
        """Resize (when `size` is given) and normalise: the arrays the model is fed."""
        return self.normalise(self.resize_images(x, size))

    @property
    def label(self) -> str:
        """The preset's name, "none" for plain [0, 1] RGB, else "custom"."""
        return self.preset or ("custom" if self.normalises else "none")

    @property
    def normalises(self) -> bool:
        """True when the model's input is not plain [0, 1] RGB (mean/std, another range or BGR)."""
        return self.mean is not None or tuple(self.value_range) != (0.0, 1.0) or self.channel_order != "rgb"

    def same_as(self, other: "Preprocess | None") -> bool:
        """Equal values (the `preset` label aside)."""
        other = other or Preprocess()
        return {**self.to_dict(), "preset": None} == {**other.to_dict(), "preset": None}

    def manifest(self, example_shape, data: str | None = None) -> dict:
        """The bundle manifest's `preprocessing`: layout, dtype, these fields, channels, image_size."""
        shape = [int(v) for v in example_shape]
        doc = {"layout": "NCHW", "dtype": "float32", **self.to_dict(), "channels": shape[1], "image_size": shape[-1]}
        if data:
            doc["data"] = data
        return doc


def describe(doc: dict | None) -> str:
    """One line for people: a manifest's `preprocessing` (what `edgekit verify` prints)."""
    if not doc:
        return "not recorded"
    if "resize" not in doc:
        return f"{doc.get('layout', '?')} {doc.get('dtype', '?')}, normalisation not recorded"
    norm = "no mean/std" if doc.get("mean") is None else f"mean {doc['mean']} std {doc['std']}"
    label = f" ({doc['preset']})" if doc.get("preset") else ""
    resize = doc["resize"] + (f" {doc.get('crop_fraction')}" if doc["resize"] == "shorter_crop" else "")
    size = f" {doc['channels']}x{doc['image_size']}x{doc['image_size']}" if "image_size" in doc else ""
    return (f"{doc.get('layout', 'NCHW')} {doc.get('dtype', 'float32')}{size}, resize {resize}, "
            f"{doc.get('channel_order', 'rgb')}, range {doc.get('value_range')}, {norm}{label}")


def cli_spec(preset: str | None = None, mean: str | None = None, std: str | None = None, resize: str | None = None,
             crop_fraction: float | None = None, channel_order: str | None = None) -> dict:
    """The fields the CLI options give (only those given), checked with errors naming the option."""
    spec: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise EdgeKitError(f"--preprocess {preset!r}: choose one of {', '.join(PRESETS)}")
        spec["preset"] = preset
    for option, text in (("mean", mean), ("std", std)):
        if text is not None:
            try:
                spec[option] = tuple(float(v) for v in str(text).split(","))
            except ValueError:
                raise EdgeKitError(f"--{option} {text!r}: give comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    if ("mean" in spec) != ("std" in spec):
        raise EdgeKitError("--mean and --std go together: give both (or --preprocess PRESET)")
    if resize is not None:
        if resize not in RESIZE_POLICIES:
            raise EdgeKitError(f"--resize {resize!r}: choose one of {', '.join(RESIZE_POLICIES)}")
        spec["resize"] = resize
    if crop_fraction is not None:
        spec["crop_fraction"] = float(crop_fraction)
    if channel_order is not None:
        if channel_order not in CHANNEL_ORDERS:
            raise EdgeKitError(f"--channel-order {channel_order!r}: choose rgb or bgr")
        spec["channel_order"] = channel_order
    if spec:
        try:
            Preprocess.from_spec(spec)
        except EdgeKitError as e:
            raise EdgeKitError(f"preprocess options: {str(e).removeprefix('preprocess').lstrip(': ')}") from None
    return spec


def resolve(cli: dict | None = None, recipe: "str | dict | Preprocess | None" = None,
            model: str | None = None) -> tuple[Preprocess, str]:
    """The Preprocess a run uses and where it came from: CLI fields win field by field over the
    recipe's (a CLI preset or mean/std replaces the recipe's normalisation whole); when neither
    names a normalisation, `torchvision:NAME` models get imagenet's and `pretrained:NAME` what
    their weights were trained on."""
    if isinstance(recipe, Preprocess):
        recipe = recipe.to_dict()
    elif isinstance(recipe, str):
        recipe = {"preset": recipe}
    base = {k: v for k, v in (recipe or {}).items() if v is not None}
    cli = dict(cli or {})
    if "preset" in cli or "mean" in cli:
        for k in ("preset", "mean", "std"):
            base.pop(k, None)
    merged = {**base, **cli}
    if cli:
        source = "the command line" + (" over the recipe" if base else "")
    elif base:
        source = "the recipe's input.preprocess"
    else:
        source = "nothing given: plain [0, 1] input"
    if not any(k in merged for k in ("preset", "mean")) and model and str(model).startswith("pretrained:"):
        from kit.models import pretrained_spec  # what the weights were trained on

        merged = {**merged, **{k: v for k, v in Preprocess.from_spec(pretrained_spec(str(model)).preprocess).to_dict().items()
                               if k in ("preset", "mean", "std")}}
        source = f"what {model} was trained on; --preprocess none turns it off"
    elif not any(k in merged for k in ("preset", "mean")) and model and str(model).startswith("torchvision:"):
        merged["preset"] = "imagenet"
        source = "the default for torchvision models; --preprocess none turns it off"
    return Preprocess.from_spec(merged), source
