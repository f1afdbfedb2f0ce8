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

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from .base import Metric, NoParams
from .counting import (
    checked_state,
    check_pred_range,
    flat_pair,
    iou,
    joint_histogram,
    nanmean_percent,
    per_class,
    percent,
    ratio,
    valid_pixels,
)


def confusion_scores(confusion: np.ndarray) -> Tuple[Dict[str, Any], np.ndarray]:
    """(scalar numbers, per-class IoU fractions) of a summed C x C confusion matrix."""
    tp = np.diag(confusion)
    gt_pixels = confusion.sum(axis=1)
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

    def state_shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {"confusion": (self.num_classes, self.num_classes)}

    def counts(self, pred: Any, label: Any, image_id: str) -> Dict[str, np.ndarray]:
        pred_flat, label_flat = flat_pair(pred, label, image_id)
        # a class id >= C anywhere (even on ignored pixels) means the method and the dataset
        # disagree on the class list
        check_pred_range(pred_flat, self.num_classes, image_id, f"class ids of this {self.num_classes}-class dataset")
        pred_v, label_v = valid_pixels(pred_flat, label_flat, self.num_classes, self.ignore_index, image_id)
        return {"confusion": joint_histogram(label_v, pred_v, self.num_classes, self.num_classes)}

    def compute(self, state: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        confusion = checked_state(state, self.state_shapes(), self.name)["confusion"]
        scores, class_iou = confusion_scores(confusion)
        tp = np.diag(confusion)
        scores["per_class_IoU"] = per_class(self.class_names, class_iou)
        scores["per_class_Acc"] = per_class(self.class_names, ratio(tp, confusion.sum(axis=1)))
        return scores
