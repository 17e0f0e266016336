"""A model's task: what its output means, how it is postprocessed and which metric judges it.

The recipe's optional `task` section (kit.recipes.schema) and `edgekit compress --task KIND
--postprocess pkg.mod:fn` build one. With a task and no budget.metric, the budget's metric becomes
the task's (kit.tasks.metrics, see METRICS) with `metric_drop` as its budget. Light on purpose
(pydantic only): the recipe schema imports it and `edgekit --help` must stay torch-free.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kit.errors import EdgeKitError

# built-in metric name -> kit.tasks.metrics function; the first per kind is the default
METRICS = {"top1": "kit.tasks.metrics:top1", "top5": "kit.tasks.metrics:top5",
           "miou": "kit.tasks.metrics:miou", "pixel_agreement": "kit.tasks.metrics:pixel_agreement",
           "map50": "kit.tasks.metrics:map50", "map": "kit.tasks.metrics:map50_95"}
DEFAULT_METRIC = {"classification": "top1", "segmentation": "miou", "detection": "map50"}
# built-in postprocess name -> function
POSTPROCESS = {"yolo": "kit.tasks.detect:postprocess", "argmax": "kit.tasks.metrics:argmax_masks"}
DEFAULT_POSTPROCESS = {"detection": "yolo", "segmentation": "argmax"}
OUTPUT_MEANING = {
    "classification": "[N, C]: class logits",
    "segmentation": "[N, C, H, W]: class logits per pixel (class 0 = background); argmax -> mask",
    "detection": "[N, 4+C, A]: per anchor, boxes x0,y0,x1,y1 normalised to [0,1], then C class scores in [0,1]",
}


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["classification", "segmentation", "detection"]
    postprocess: str | None = Field(None, description="pkg.module:fn(outputs, **params) -> per-image results, or a "
                                                      "built-in name (yolo, argmax); default per kind.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the postprocess "
                                   "(e.g. image_size, conf, iou) and the metric (num_classes, pseudo_conf).")
    metric: str | None = Field(None, description="top1 | top5 | miou | pixel_agreement | map50 | map, or "
                                                 "pkg.module:fn; default per kind.")
    metric_drop: float = Field(0.05, ge=0, description="Default budget.metric_drop (metric units) when the "
                                                      "budget names no metric.")
    output: str | None = Field(None, description="What the model's output tensor means (recorded in the manifest).")

    @property
    def metric_spec(self) -> str:
        name = self.metric or DEFAULT_METRIC[self.kind]
        if name in METRICS:
            return METRICS[name]
        if ":" not in name:
            raise EdgeKitError(f"task.metric {name!r}: give one of {', '.join(METRICS)} or pkg.module:function")
        return name

    @property
    def postprocess_spec(self) -> str | None:
        name = self.postprocess or DEFAULT_POSTPROCESS.get(self.kind)
        return POSTPROCESS.get(name, name) if name else None

    def manifest(self, metric: str | None = None, report: dict | None = None) -> dict:
        """The bundle manifest's `task` entry; with the chain's `report`, the metric of the original
        (`baseline`) and of the compressed model before export (`value`; report.json's
        artifact.metric has the packaged artifact's own)."""
        doc = {"kind": self.kind, "metric": metric or self.metric_spec, "label": metric_label(metric or self.metric_spec),
               "postprocess": self.postprocess_spec, "params": self.params,
               "output": self.output or OUTPUT_MEANING[self.kind]}
        last = (report or {}).get("steps", [])[-1:] or [(report or {}).get("baseline") or {}]
        if "metric" in last[0]:
            doc.update(baseline=report["baseline"]["metric"]["value"], value=last[0]["metric"]["value"],
                       samples=report.get("eval_samples"))
        return doc

    def run_postprocess(self, outputs, **override) -> list:
        """The postprocess on one model's outputs, with the task's params (and `override`) that its
        signature takes."""
        spec = self.postprocess_spec
        if not spec:
            raise EdgeKitError(f"task {self.kind}: no postprocess; set task.postprocess (--postprocess pkg.mod:fn)")
        fn = load_callable(spec, "task.postprocess (--postprocess)")
        params = {**self.params, **override}
        sig = inspect.signature(fn).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
            params = {k: v for k, v in params.items() if k in sig}
        return fn(outputs, **params)


LABELS = {"kit.tasks.metrics:top1": "top-1", "kit.tasks.metrics:top5": "top-5", "kit.tasks.metrics:miou": "mIoU",
          "kit.tasks.metrics:pixel_agreement": "pixel agreement", "kit.tasks.metrics:map50": "mAP@0.5",
          "kit.tasks.metrics:map50_95": "mAP@0.5:0.95"}


def metric_label(spec: str | None) -> str:
    """A metric spec as people say it (mAP@0.5, mIoU); a user metric keeps its function name."""
    return LABELS.get(spec or "", (spec or "").rpartition(":")[2])


def metric_text(task: dict | None) -> str:
    """A manifest `task` entry in a few words, e.g. "detection mAP@0.5 0.912 (fp32 0.950)"."""
    if not task:
        return ""
    text = f"{task.get('kind', '')} {task.get('label') or metric_label(task.get('metric'))}"
    if task.get("value") is not None:
        text += f" {task['value']:.3f}" + (f" (fp32 {task['baseline']:.3f})" if task.get("baseline") is not None else "")
    return text


def load_callable(spec: str, where: str):
    """`pkg.module:fn` -> fn; a bad spec is one line naming it."""
    module, sep, name = (spec or "").partition(":")
    if not sep or not module or not name:
        raise EdgeKitError(f"{where} {spec!r}: give it as pkg.module:function")
    try:
        fn = getattr(importlib.import_module(module), name, None)
    except Exception as e:  # noqa: BLE001 - the user's module failing to import, for any reason
        raise EdgeKitError(f"{where} {spec!r}: cannot import {module!r} ({type(e).__name__}: {e}); make it importable") from None
    if not callable(fn):
        raise EdgeKitError(f"{where} {spec!r}: {module!r} has no function {name!r}")
    return fn


def parse_task(kind: str | None, postprocess: str | None = None, **params) -> Task | None:
    """--task/--postprocess as a Task (None without --task); a bad kind is one line."""
    if kind is None:
        if postprocess:
            raise EdgeKitError("--postprocess needs --task (classification | segmentation | detection)")
        return None
    if kind not in DEFAULT_METRIC:
        raise EdgeKitError(f"--task {kind!r}: give classification, segmentation or detection")
    return Task(kind=kind, postprocess=postprocess, params={k: v for k, v in params.items() if v is not None})
