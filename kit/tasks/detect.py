"""A small YOLO-style detector: anchor-free, three strides (8/16/32), one concatenated output
[N, 4+C, A] like a YOLO export (rows 0..3: boxes xyxy normalised to [0,1]; then C class scores in
[0,1]; A anchor points over all strides). Box and score decoding happen inside the network (fixed
anchor grids, no data-dependent shapes), so it exports with torch.export; the score threshold
and NMS run after it in `postprocess` (plain numpy, kit.tasks.postprocess).

`train_detector` trains it on kit.tasks.shapes data in a minute or so on one CPU core.
SSDlite (torchvision) split at its raw head: kit.tasks.ssd.ssdlite_raw.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kit.tasks import postprocess as _post

OUTPUT_MEANING = ("[N, 4+C, A]: per anchor point, boxes x0,y0,x1,y1 normalised to [0,1] by the input size, then C class "
                  "scores in [0,1]; decode+NMS: kit.tasks.detect:postprocess")


def postprocess(outputs, image_size: float = 1.0, conf: float = 0.05, iou: float = 0.5, max_det: int = 100) -> list[dict]:
    """[N, 4+C, A] -> per image {"boxes" (pixels when image_size is given), "scores", "labels"}."""
    return _post.yolo(outputs, image_size=image_size, conf=conf, iou=iou, max_det=max_det)


def _conv(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyYolo(nn.Module):
    """Backbone of stride-2 convolutions; a head per stride (8, 16, 32) predicting, per anchor
    point, distances to the box sides (sigmoid * 4 strides) and class logits."""

    def __init__(self, num_classes: int = 2, image_size: int = 64, width: int = 16):
        super().__init__()
        c = [width, width * 2, width * 3, width * 4, width * 6]
        self.num_classes, self.image_size, self.strides = num_classes, image_size, (8, 16, 32)
        self.stem = nn.Sequential(_conv(3, c[0], 2), _conv(c[0], c[1], 2), _conv(c[1], c[2], 2), _conv(c[2], c[2]))
        self.down16 = nn.Sequential(_conv(c[2], c[3], 2), _conv(c[3], c[3]))
        self.down32 = nn.Sequential(_conv(c[3], c[4], 2), _conv(c[4], c[4]))
        self.heads = nn.ModuleList(nn.Sequential(_conv(ch, ch), nn.Conv2d(ch, 4 + num_classes, 1))
                                   for ch in (c[2], c[3], c[4]))
        points, spans = [], []
        for s in self.strides:
            n = -(-image_size // s)
            ys, xs = np.meshgrid((np.arange(n) + 0.5) * s, (np.arange(n) + 0.5) * s, indexing="ij")
            points.append(np.stack([xs.ravel(), ys.ravel()], 1))
            spans.append(np.full(n * n, 4.0 * s))
        self.register_buffer("points", torch.tensor(np.concatenate(points), dtype=torch.float32).T.unsqueeze(0))  # 1,2,A
        self.register_buffer("spans", torch.tensor(np.concatenate(spans), dtype=torch.float32)[None, None, :])  # 1,1,A
        with torch.no_grad():
            for head in self.heads:
                head[-1].bias[4:].fill_(-4.0)  # rare positives: start with low scores

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        f8 = self.stem(x)
        f16 = self.down16(f8)
        f32 = self.down32(f16)
        return torch.cat([h(f).flatten(2) for h, f in zip(self.heads, (f8, f16, f32))], 2)  # N, 4+C, A

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Boxes in pixels (N, 4, A) from the raw distances."""
        dist = torch.sigmoid(raw[:, :4]) * self.spans
        return torch.cat([self.points - dist[:, :2], self.points + dist[:, 2:]], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.raw(x)
        boxes = torch.clamp(self.decode(raw) / float(self.image_size), 0.0, 1.0)
        return torch.cat([boxes, torch.sigmoid(raw[:, 4:])], 1)


def assign(model: TinyYolo, targets: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: which anchor points are positive, their class and box (pixels). A box goes to the
    smallest stride with max side <= 3 strides; its positives are that stride's points inside it
    (the nearest point when none is)."""
    pts = model.points[0].T.numpy()
    spans = model.spans[0, 0].numpy()
    strides = spans / 4.0
    n, a = len(targets), len(pts)
    pos, cls, box = np.zeros((n, a), bool), np.zeros((n, a), np.int64), np.zeros((n, a, 4), np.float32)
    for i, t in enumerate(targets):
        for b, label in zip(t["boxes"], t["labels"]):
            side = max(b[2] - b[0], b[3] - b[1])
            level = next((s for s in model.strides if side <= 3 * s), model.strides[-1])
            on = strides == level
            inside = on & (pts[:, 0] > b[0]) & (pts[:, 0] < b[2]) & (pts[:, 1] > b[1]) & (pts[:, 1] < b[3])
            if not inside.any():
                centre = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
                d = np.where(on, ((pts - centre) ** 2).sum(1), np.inf)
                inside = np.zeros(a, bool)
                inside[int(np.argmin(d))] = True
            pos[i, inside], cls[i, inside], box[i, inside] = True, int(label), b
    return pos, cls, box


def detection_loss(model: TinyYolo, x: torch.Tensor, pos, cls, box) -> torch.Tensor:
    from torchvision.ops import generalized_box_iou_loss

    raw = model.raw(x)
    logits = raw[:, 4:].transpose(1, 2)  # N, A, C
    target = torch.zeros_like(logits)
    target[pos] = nn.functional.one_hot(cls[pos], model.num_classes).float()
    npos = max(1, int(pos.sum()))
    cls_loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / npos
    pred = model.decode(raw).transpose(1, 2)[pos]  # P, 4 pixels
    gt = box[pos]
    box_loss = generalized_box_iou_loss(pred, gt, reduction="mean") + \
        nn.functional.l1_loss(pred / model.image_size, gt / model.image_size) * 5.0
    return cls_loss + 2.0 * box_loss


def train_detector(images: np.ndarray, targets: list, num_classes: int = 2, steps: int = 400, batch: int = 32,
                   lr: float = 3e-3, seed: int = 0, width: int = 16) -> TinyYolo:
    """Train a TinyYolo on (images, targets) for `steps` Adam steps; returns it in eval mode."""
    torch.manual_seed(seed)
    model = TinyYolo(num_classes, images.shape[-1], width)
    pos, cls, box = (torch.from_numpy(v) for v in assign(model, targets))
    x_all = torch.from_numpy(images)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        xb = x_all[idx]
        pb, cb, bb = pos[idx], cls[idx], box[idx]
        if torch.rand(1, generator=gen).item() < 0.5:  # horizontal flip
            xb = xb.flip(-1)
            w = float(model.image_size)
            bb = torch.stack([w - bb[..., 2], bb[..., 1], w - bb[..., 0], bb[..., 3]], -1)
            pb, cb, bb = (_flip_anchors(model, v) for v in (pb, cb, bb))
        loss = detection_loss(model, xb, pb, cb, bb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _flip_anchors(model: TinyYolo, v: torch.Tensor) -> torch.Tensor:
    """Reorder per-anchor targets (N, A, ...) for a horizontally flipped image."""
    parts, start = [], 0
    for s in model.strides:
        n = -(-model.image_size // s)
        block = v[:, start:start + n * n]
        parts.append(block.reshape(v.shape[0], n, n, *v.shape[2:]).flip(2).reshape(block.shape))
        start += n * n
    return torch.cat(parts, 1)
