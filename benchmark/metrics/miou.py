"""metric=miou: confusion-matrix mIoU, aAcc, mAcc (mmseg IoUMetric / Cityscapes pixel level).

State: one C x C int64 confusion matrix per image, rows = ground-truth class, columns =
predicted class, over the pixels whose label is not ``ignore_index``.

From the summed confusion:

* IoU_c  = TP_c / (TP_c + FP_c + FN_c); NaN when the union is empty (class neither in the
  ground truth nor predicted), and left out of mIoU (nan-mean). A class that is predicted
  but absent from the ground truth has IoU 0 and *does* count.
* aAcc   = sum TP / number of valid pixels.
* Acc_c  = TP_c / (TP_c + FN_c) (recall); mAcc = nan-mean over classes present in the GT.

These are mmseg's ``IoUMetric`` (``intersect_and_union`` + ``total_area_to_metrics``,
without its rounding to 2 decimals) and the official Cityscapes ``getIouScoreForLabel`` /
``getScoreAverage`` on the same pixels; ``tests/test_metrics.py`` checks both.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .base import Metric, NoParams
from .counting import (
    checked_state,
    check_pred_range,
    decided,
    flat_pair,
    iou,
    joint_histogram,
    nanmean_percent,
    per_class,
    percent,
    ratio,
    split_void,
    valid_pixels,
)


def confusion_scores(confusion: np.ndarray, undecided: Optional[np.ndarray] = None) -> Tuple[Dict[str, Any], np.ndarray]:
    """(scalar numbers, per-class IoU fractions) of a summed C x C confusion matrix; the
    pixels of ``undecided`` (C,) (predicted ``void_value``) add to their class's FN only."""
    tp = np.diag(confusion)
    gt_pixels = confusion.sum(axis=1) + (0 if undecided is None else undecided)
    pred_pixels = confusion.sum(axis=0)
    class_iou = iou(tp, pred_pixels - tp, gt_pixels - tp)
    class_acc = ratio(tp, gt_pixels)
    scores = {
        "mIoU": nanmean_percent(class_iou),
        "aAcc": percent(ratio(tp.sum(), gt_pixels.sum())),
        "mAcc": nanmean_percent(class_acc),
    }
    return scores, class_iou


class MeanIoU(Metric):
    """Confusion-matrix mIoU over class predictions (open-vocabulary methods)."""

    name = "miou"
    Params = NoParams

    def __init__(self, num_classes: int, class_names, ignore_index: int = 255, params: Any = None,
                 void_value: Optional[int] = None):
        super().__init__(num_classes, class_names, ignore_index, params, void_value)
        self.check_void_value(self.num_classes, "class ids")

    def state_shapes(self) -> Dict[str, Tuple[int, ...]]:
        shapes = {"confusion": (self.num_classes, self.num_classes)}
        if self.void_value is not None:  # valid pixels predicted void_value, per label class
            shapes["undecided"] = (self.num_classes,)
        return shapes

    def counts(self, pred: Any, label: Any, image_id: str) -> Dict[str, np.ndarray]:
        pred_flat, label_flat = flat_pair(pred, label, image_id)
        # a class id >= C anywhere (even on ignored pixels) means the method and the dataset
        # disagree on the class list; only method.void_value is exempt
        check_pred_range(decided(pred_flat, self.void_value), self.num_classes, image_id,
                         f"class ids of this {self.num_classes}-class dataset"
                         + ("" if self.void_value is None else f" nor method.void_value={self.void_value}"))
        pred_v, label_v = valid_pixels(pred_flat, label_flat, self.num_classes, self.ignore_index, image_id)
        pred_v, label_v, undecided = split_void(pred_v, label_v, self.void_value, self.num_classes)
        counts = {"confusion": joint_histogram(label_v, pred_v, self.num_classes, self.num_classes)}
        if undecided is not None:
            counts["undecided"] = undecided
        return counts

    def scores(self, state: Mapping[str, np.ndarray]) -> Tuple[Dict[str, Any], np.ndarray]:
        """(mIoU/aAcc/mAcc and per-class Acc, per-class IoU fractions) of a summed state."""
        s = checked_state(state, self.state_shapes(), self.name)
        scores, class_iou = confusion_scores(s["confusion"], s.get("undecided"))
        gt_pixels = s["confusion"].sum(axis=1) + s.get("undecided", 0)
        scores["per_class_Acc"] = per_class(self.class_names, ratio(np.diag(s["confusion"]), gt_pixels))
        return scores, class_iou

    def compute(self, state: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        scores, class_iou = self.scores(state)
        per_class_acc = scores.pop("per_class_Acc")
        scores["per_class_IoU"] = per_class(self.class_names, class_iou)
        scores["per_class_Acc"] = per_class_acc
        return scores
