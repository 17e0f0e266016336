"""How a model wants its input: the preprocessing half of the model's contract.

A `Preprocess` is recorded in the recipe (`input.preprocess`), applied by the data loaders, written
into the bundle manifest (`preprocessing`), shown by `edgekit verify` and used for the agent's
reference input, so nobody wraps a model by hand to normalise. Images reach `apply` as float32
NCHW RGB in [0, 1] at any size; out come the arrays the model is fed.
"""

from __future__ import annotations

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
