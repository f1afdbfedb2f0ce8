"""Hungarian-matched metrics for unsupervised segment ids.

``hungarian_dataset`` (STEGO / PiCIE): one match of clusters to classes over the whole
split. ``hungarian_image`` (DiffSeg): one match per image, TP/FP/FN accumulated. The two
give different numbers on the same predictions and are only comparable with themselves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .base import Metric, NoParams
from .counting import (
    check_pred_range,
    checked_state,
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


def matched_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, valid: int, names: List[str]) -> Dict[str, Any]:
    """mIoU (nan-mean), ACC = sum TP / valid pixels, per-class IoU."""
    class_iou = iou(tp, fp, fn)
    return {
        "mIoU": nanmean_percent(class_iou),
        "ACC": percent(ratio(tp.sum(), valid)),
        "per_class_IoU": per_class(names, class_iou),
    }


@dataclass
class HungarianDatasetParams:
    #: number of clusters K the method may output (ids 0..K-1); None means K = C
    num_clusters: Optional[int] = None


class HungarianDataset(Metric):
    """Dataset-level Hungarian matching (STEGO ``UnsupervisedMetrics``, PiCIE).

    State: ``histogram`` (K, C) int64, rows = cluster id, columns = ground-truth class,
    over valid pixels. At the end ``linear_sum_assignment(histogram, maximize=True)``
    matches min(K, C) clusters one-to-one to classes. With the matched cluster k(c) of
    class c: TP_c = H[k(c), c], FP_c = rowsum_k(c) - TP_c, FN_c = colsum_c - TP_c;
    IoU_c = TP/(TP+FP+FN), mIoU = nan-mean over the C classes, ACC = sum TP / valid pixels.

    K > C (over-clustering): the K - C unmatched clusters are wrong predictions for every
    pixel they hold. Those pixels add to the FN of their ground-truth class (they stay in
    its column sum) and to no class's FP (no class claims the cluster); they stay in the
    ACC denominator. mIoU averages the C real classes only. For K = C (all published
    numbers) this equals STEGO's and PiCIE's code exactly. STEGO's own extra-cluster branch
    differs: its ``update`` drops pixels whose cluster id is >= C, and its ``compute`` adds
    a pseudo-class row for the unmatched clusters whose IoU 0 enters the mean.

    K < C: only K classes get a cluster; the others have TP = FP = 0, so IoU 0 if present.

    With ``method.void_value`` the state adds ``undecided`` (C,): valid pixels predicted the
    void value, per class; they add to that class's FN and to the ACC denominator.
    """

    name = "hungarian_dataset"
    Params = HungarianDatasetParams

    def __init__(self, num_classes: int, class_names, ignore_index: int = 255, params: Any = None,
                 void_value: Optional[int] = None):
        super().__init__(num_classes, class_names, ignore_index, params, void_value)
        k = self.params.num_clusters
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"metric {self.name}: num_clusters must be a positive integer or null (= C), got {k!r}")
        self.num_clusters = self.num_classes if k is None else int(k)
        self.check_void_value(self.num_clusters, "cluster ids")

    def state_shapes(self) -> Dict[str, Tuple[int, ...]]:
        shapes = {"histogram": (self.num_clusters, self.num_classes)}
        if self.void_value is not None:  # valid pixels predicted void_value, per label class
            shapes["undecided"] = (self.num_classes,)
        return shapes

    def counts(self, pred: Any, label: Any, image_id: str) -> Dict[str, np.ndarray]:
        pred_flat, label_flat = flat_pair(pred, label, image_id)
        check_pred_range(
            decided(pred_flat, self.void_value), self.num_clusters, image_id,
            f"cluster ids for metric.num_clusters={self.num_clusters}",
        )
        pred_v, label_v = valid_pixels(pred_flat, label_flat, self.num_classes, self.ignore_index, image_id)
        pred_v, label_v, undecided = split_void(pred_v, label_v, self.void_value, self.num_classes)
        counts = {"histogram": joint_histogram(pred_v, label_v, self.num_clusters, self.num_classes)}
        if undecided is not None:
            counts["undecided"] = undecided
        return counts

    def match(self, histogram: np.ndarray) -> np.ndarray:
        """cluster_of_class (C,): the cluster matched to each class, -1 for none."""
        clusters, classes = linear_sum_assignment(histogram, maximize=True)
        cluster_of_class = np.full(self.num_classes, -1, dtype=np.int64)
        cluster_of_class[classes] = clusters
        return cluster_of_class

    def compute(self, state: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        checked = checked_state(state, self.state_shapes(), self.name)
        histogram = checked["histogram"]
        undecided = checked.get("undecided", np.zeros(self.num_classes, dtype=np.int64))
        cluster_of_class = self.match(histogram)
        matched = cluster_of_class >= 0
        classes = np.flatnonzero(matched)
        clusters = cluster_of_class[matched]
        tp = np.zeros(self.num_classes, dtype=np.int64)
        fp = np.zeros(self.num_classes, dtype=np.int64)
        tp[classes] = histogram[clusters, classes]
        fp[classes] = histogram[clusters].sum(axis=1) - tp[classes]
        fn = histogram.sum(axis=0) - tp + undecided
        scores = matched_scores(tp, fp, fn, int(histogram.sum() + undecided.sum()), self.class_names)
        assignment: List[Optional[int]] = [None] * self.num_clusters
        for cls_idx, cluster in zip(classes.tolist(), clusters.tolist()):
            assignment[cluster] = cls_idx
        #: assignment[k] = class index matched to cluster k (None: unmatched cluster)
        scores["assignment"] = assignment
        return scores


#: largest segment id hungarian_image accepts: its histogram has max_id + 1 columns
MAX_SEGMENT_ID = 65535


@dataclass
class HungarianImageParams:
    #: index of the background class for DiffCut's many-to-one background matching
    #: (PaulCouairon/DiffCut eval_diffcut.py, VOC20 / Context / COCO-Object): before the
    #: per-image match, segments not matched (Hungarian on the foreground classes only) to
    #: a foreground class present in the image are merged into one background segment.
    #: None = plain per-image matching (DiffSeg).
    background: Optional[int] = None


def merge_unmatched_into_background(pred: np.ndarray, label: np.ndarray, num_classes: int, background: int) -> np.ndarray:
    """``pred`` with every segment not matched to a present foreground class merged into one new id.

    pred, label: flat arrays of the valid pixels (labels in [0, num_classes)). Follows
    DiffCut eval_diffcut.py ``evaluate``: Hungarian on the (C-1, P) histogram of the
    foreground classes (background pixels left out), P = max(C-1, max id + 1); the
    segment matched to class c is kept when some matched segment overlaps c (the official
    ``hist.max(axis=1) > 0`` on the column-reordered histogram); all other ids become
    ``max id + 1``.
    """
    foreground = [c for c in range(num_classes) if c != background]
    row_of = np.full(num_classes, -1, dtype=np.int64)
    row_of[foreground] = np.arange(len(foreground))
    keep = label != background
    n_cols = max(len(foreground), int(pred.max()) + 1 if pred.size else 0)
    hist = joint_histogram(row_of[label[keep]], pred[keep], len(foreground), n_cols)
    rows, cols = linear_sum_assignment(hist, maximize=True)  # rows == arange(C - 1)
    # eval_diffcut.py reads hist.max(axis=1) of the histogram returned by tools/utils.py
    # hungarian_matching, whose columns are already reordered to the matched ones
    # (hist[:, col_ind]): a class counts as assigned when any MATCHED segment overlaps it
    kept = set(cols[hist[:, cols].max(axis=1) > 0].tolist())
    merged = pred.copy()
    merged[~np.isin(pred, list(kept))] = int(pred.max()) + 1 if pred.size else 0
    return merged


class HungarianImage(Metric):
    """Per-image Hungarian matching, as in DiffSeg's ``hungarian_matching`` (diffseg/utils.py).

    Per image: H (C, P) over valid pixels, rows = GT class, columns = segment id, with
    P = max(C, max_pred + 1) where max_pred is the largest id anywhere in the prediction
    (ignored pixels included, as in DiffSeg's ``_fast_hist``, so that the solver sees the
    very matrix DiffSeg gives it: extra all-zero columns could only change how an absent
    class's all-zero row is tie-broken).
    ``linear_sum_assignment(H, maximize=True)`` gives every class c a distinct column
    col_c; TP_c += H[c, col_c], FN_c += rowsum_c - TP_c, FP_c += colsum(col_c) - TP_c.
    Consequences of the protocol, kept on purpose: pixels of unmatched extra segments count
    only as FN; a class absent from an image may be matched to a leftover segment and then
    collects its pixels as FP.

    State: ``tp``, ``fp``, ``fn`` (C,) and ``valid`` (1,) = number of valid pixels.
    With ``method.void_value`` its pixels belong to no segment: each adds to the FN of its
    label's class and stays valid (mmseg's rule for a prediction outside the classes).
    IoU_c = TP/(TP+FP+FN) over the summed counts, mIoU = nan-mean, ACC = sum TP / valid.
    ``metric.background=<class index>``: DiffCut's many-to-one background first
    (``merge_unmatched_into_background``).
    """

    name = "hungarian_image"
    Params = HungarianImageParams

    def __init__(self, num_classes: int, class_names, ignore_index: int = 255, params: Any = None,
                 void_value: Optional[int] = None):
        super().__init__(num_classes, class_names, ignore_index, params, void_value)
        bg = self.params.background
        if bg is not None and not (isinstance(bg, int) and 0 <= bg < self.num_classes):
            raise ValueError(f"metric.background={bg!r}: expected a class index in [0, {self.num_classes}) or null")

    def state_shapes(self) -> Dict[str, Tuple[int, ...]]:
        c = self.num_classes
        return {"tp": (c,), "fp": (c,), "fn": (c,), "valid": (1,)}

    @staticmethod
    def match_segments(
        pred_flat: np.ndarray,
        label_flat: np.ndarray,
        num_classes: int,
        ignore_index: int = 255,
        image_id: str = "",
        background: Optional[int] = None,
        void_value: Optional[int] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int, Optional[np.ndarray]]:
        """This image's match: (classes, segments, H, n_valid, undecided) with segment
        ``segments[i]`` matched to class ``classes[i]`` (every class gets one column of H (C, P),
        see the class docstring); reports colour predictions with the same match as the counts.
        ``background``: DiffCut's many-to-one background (``merge_unmatched_into_background``).
        ``void_value``: pixels predicted it belong to no segment; ``undecided`` (C,) counts them
        per label class (None without a void value)."""
        segments = decided(pred_flat, void_value)
        check_pred_range(segments, MAX_SEGMENT_ID + 1, image_id, "segment ids (relabel segments to 0..n-1)")
        n_cols = max(num_classes, int(segments.max()) + 1 if segments.size else 0)
        pred_v, label_v = valid_pixels(pred_flat, label_flat, num_classes, ignore_index, image_id)
        n_valid = int(label_v.size)
        pred_v, label_v, undecided = split_void(pred_v, label_v, void_value, num_classes)
        if background is not None:
            pred_v = merge_unmatched_into_background(pred_v, label_v, num_classes, background)
            n_cols = max(n_cols, int(pred_v.max()) + 1 if pred_v.size else 0)
        hist = joint_histogram(label_v, pred_v, num_classes, n_cols)
        rows, cols = linear_sum_assignment(hist, maximize=True)  # rows == arange(C) since C <= P
        return rows, cols, hist, n_valid, undecided

    def counts(self, pred: Any, label: Any, image_id: str) -> Dict[str, np.ndarray]:
        pred_flat, label_flat = flat_pair(pred, label, image_id)
        rows, cols, hist, n_valid, undecided = self.match_segments(
            pred_flat, label_flat, self.num_classes, self.ignore_index, image_id, self.params.background, self.void_value
        )
        tp = hist[rows, cols]
        return {
            "tp": tp,
            "fp": hist.sum(axis=0)[cols] - tp,
            "fn": hist.sum(axis=1)[rows] - tp + (0 if undecided is None else undecided),
            "valid": np.array([n_valid], dtype=np.int64),
        }

    def compute(self, state: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        s = checked_state(state, self.state_shapes(), self.name)
        return matched_scores(s["tp"], s["fp"], s["fn"], int(s["valid"][0]), self.class_names)
