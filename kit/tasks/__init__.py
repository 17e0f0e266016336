"""Tasks beyond classification: detection and segmentation models, their postprocessing, their
metrics and their data.

- `shapes`: a seeded synthetic data set (coloured rectangles and discs on noise) with boxes and masks,
  and a writer that saves it as image folders with COCO JSON, YOLO txt labels and mask PNGs;
- `detect`: a small YOLO-style anchor-free detector (one [N, 4+C, A] output), its training, and
  `postprocess` (decode + NMS in plain numpy); `ssdlite_raw` (torchvision SSDlite up to its raw head);
- `segment`: a small segmenter and an LRASPP wrapper returning its "out" tensor;
- `metrics`: top-1/top-5, mIoU and pixel agreement, mAP@0.5 and mAP@0.5:0.95 (torchmetrics);
- `data`: loaders for COCO JSON / YOLO txt / mask PNG / unlabelled image folders;
- `spec`: the recipe's `task` section (kind, postprocess, params) and its metric.
"""
