"""torchvision SSDlite320-MobileNetV3 split at its raw head: the deployable network is backbone +
head, returning one tensor [N, A, 4+C] (box deltas, then class logits, background first); the
anchor decode + NMS is kit.tasks.postprocess.ssd (numpy). torchvision's own forward does decoding
and NMS with data-dependent shapes and does not export; this part does. Its input is the image
already preprocessed at a fixed size (torchvision's transform, resize + normalise, is left to the
data loader)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

OUTPUT_MEANING = ("[N, A, 4+C]: per anchor, box deltas dx,dy,dw,dh (weights 10,10,5,5) then C class logits "
                  "(class 0 = background); decode+NMS: kit.tasks.postprocess.ssd with the bundle's anchors")


class SsdRaw(nn.Module):
    def __init__(self, ssd, image_size: int):
        super().__init__()
        self.backbone, self.head = ssd.backbone, ssd.head
        self.image_size = image_size
        self.anchors = self._anchors(ssd, image_size)  # (A, 4) xyxy pixels, numpy: for postprocess

    def _anchors(self, ssd, size: int) -> np.ndarray:
        from torchvision.models.detection.image_list import ImageList

        with torch.no_grad():
            x = torch.zeros(1, 3, size, size)
            feats = list(self.backbone(x).values())
            return ssd.anchor_generator(ImageList(x, [(size, size)]), feats)[0].numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(list(self.backbone(x).values()))
        return torch.cat([out["bbox_regression"], out["cls_logits"]], -1)


def ssdlite_raw(image_size: int = 320, num_classes: int = 91) -> SsdRaw:
    """Random-weight SSDlite320-MobileNetV3 (weights=None, weights_backbone=None) up to its raw head."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes).eval()
    return SsdRaw(ssd, image_size).eval()


def postprocess(outputs, anchors, conf: float = 0.05, iou: float = 0.5, max_det: int = 100) -> list[dict]:
    from kit.tasks.postprocess import ssd

    return ssd(outputs, anchors, conf=conf, iou=iou, max_det=max_det)
