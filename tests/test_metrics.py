"""Metrics against independent slow references (plain loops over pixels), hand-worked
examples, mmseg's IoUMetric formulas, torchmetrics and the official Cityscapes evaluation.

The references here share no code with ``benchmark.metrics``: they count pixel by pixel in
Python and only reuse ``scipy.optimize.linear_sum_assignment``, the solver every protocol
prescribes (so that ties are broken the same way).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from scipy.optimize import linear_sum_assignment

from benchmark.metrics import METRICS, SPLIT_PRESETS, get_metric
from benchmark.metrics.hungarian import HungarianDataset, HungarianImage
from benchmark.metrics.miou import MeanIoU
from benchmark.metrics.zeroshot import ZeroShot
from benchmark.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
IGNORE = 255
VOC20 = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()


def names(n):
    return [f"class{i}" for i in range(n)]


def make(metric_cls, num_classes, **params):
    return metric_cls(num_classes, names(num_classes), IGNORE, metric_cls.Params(**params))


# --------------------------------------------------------------------------------------
# adversarial random datasets
# --------------------------------------------------------------------------------------
def adversarial_dataset(rng, num_classes, num_pred, n_images=7):
    """(preds, labels): random images plus the edge cases the issue lists.

    Labels use only a subset of the classes (absent classes), ~15 % ignored pixels; one
    image is all-ignore, one has a single class; predictions take values in
    [0, num_pred) (num_pred > num_classes gives more segments than classes).
    """
    present = rng.choice(num_classes, size=max(1, num_classes - 2), replace=False)
    preds, labels = [], []
    for i in range(n_images):
        h, w = rng.integers(5, 14, size=2)
        label = rng.choice(present, size=(h, w))
        label[rng.random((h, w)) < 0.15] = IGNORE
        pred = rng.integers(0, num_pred, size=(h, w))
        if i == 0:  # mostly right, so matches and IoUs are not all tiny
            pred = np.where(label == IGNORE, pred, label % num_pred)
            flip = rng.random((h, w)) < 0.3
            pred[flip] = rng.integers(0, num_pred, size=int(flip.sum()))
        preds.append(pred)
        labels.append(label)
    # all-ignore image, then a single-class image
    preds.append(rng.integers(0, num_pred, size=(6, 4)))
    labels.append(np.full((6, 4), IGNORE))
    preds.append(rng.integers(0, num_pred, size=(5, 5)))
    labels.append(np.full((5, 5), present[0]))
    return preds, labels


def summed_counts(metric, preds, labels):
    total = metric.zero_state()
    for i, (pred, label) in enumerate(zip(preds, labels)):
        counts = metric.counts(pred, label, f"img{i}")
        assert set(counts) == set(metric.state_shapes())
        for key, arr in counts.items():
            assert arr.dtype == np.int64 and arr.shape == metric.state_shapes()[key]
        metric.add_(total, counts)
    return total


def assert_percent(value, fraction, abs_tol=1e-9):
    """value (percentage or None) equals fraction (float, NaN meaning undefined)."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        assert value is None
    else:
        assert value == pytest.approx(100.0 * fraction, abs=abs_tol)


# --------------------------------------------------------------------------------------
# slow references
# --------------------------------------------------------------------------------------
def ref_confusion(preds, labels, num_classes):
    conf = [[0] * num_classes for _ in range(num_classes)]
    for pred, label in zip(preds, labels):
        for g, p in zip(np.asarray(label).ravel().tolist(), np.asarray(pred).ravel().tolist()):
            if g != IGNORE:
                conf[g][p] += 1
    return conf


def ref_scores_from_confusion(conf):
    """Per-class IoU and recall (NaN if undefined), aAcc, from nested lists."""
    n = len(conf)
    ious, accs = [], []
    for c in range(n):
        tp = conf[c][c]
        fn = sum(conf[c][j] for j in range(n)) - tp
        fp = sum(conf[i][c] for i in range(n)) - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else float("nan"))
        accs.append(tp / (tp + fn) if tp + fn else float("nan"))
    total = sum(sum(row) for row in conf)
    aacc = sum(conf[c][c] for c in range(n)) / total if total else float("nan")
    return ious, accs, aacc


def ref_nanmean(values):
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def ref_hungarian_image(preds, labels, num_classes):
    """DiffSeg's hungarian_matching (diffseg/utils.py), one image at a time, with loops."""
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    valid = 0
    for pred, label in zip(preds, labels):
        pred_l, label_l = np.asarray(pred).ravel().tolist(), np.asarray(label).ravel().tolist()
        n_cols = max(num_classes, max(pred_l) + 1)
        hist = np.zeros((num_classes, n_cols), dtype=np.int64)
        for g, p in zip(label_l, pred_l):
            if g != IGNORE:
                hist[g, p] += 1
                valid += 1
        rows, cols = linear_sum_assignment(hist, maximize=True)
        for c, col in zip(rows.tolist(), cols.tolist()):
            hit = int(hist[c, col])
            tp[c] += hit
            fn[c] += int(hist[c, :].sum()) - hit
            fp[c] += int(hist[:, col].sum()) - hit
    return tp, fp, fn, valid


def ref_hungarian_dataset(preds, labels, num_classes, num_clusters):
    """Match on the dataset histogram, then relabel every pixel and count TP/FP/FN.

    Stated semantics: a pixel of an unmatched cluster is a wrong prediction of no class.
    """
    hist = np.zeros((num_clusters, num_classes), dtype=np.int64)
    for pred, label in zip(preds, labels):
        for g, p in zip(np.asarray(label).ravel().tolist(), np.asarray(pred).ravel().tolist()):
            if g != IGNORE:
                hist[p, g] += 1
    clusters, classes = linear_sum_assignment(hist, maximize=True)
    class_of_cluster = {int(k): int(c) for k, c in zip(clusters, classes)}
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    valid = 0
    for pred, label in zip(preds, labels):
        for g, p in zip(np.asarray(label).ravel().tolist(), np.asarray(pred).ravel().tolist()):
            if g == IGNORE:
                continue
            valid += 1
            mapped = class_of_cluster.get(p)  # None: unmatched cluster
            if mapped == g:
                tp[g] += 1
            else:
                fn[g] += 1
                if mapped is not None:
                    fp[mapped] += 1
    return tp, fp, fn, valid, class_of_cluster


def ref_matched_scores(tp, fp, fn, valid):
    ious = [t / (t + f + n) if t + f + n else float("nan") for t, f, n in zip(tp, fp, fn)]
    return ious, ref_nanmean(ious), (sum(tp) / valid if valid else float("nan"))


def mmseg_iou_metric(preds, labels, num_classes, ignore_index=IGNORE):
    """mmseg 1.x IoUMetric: ``intersect_and_union`` per image, ``total_area_to_metrics`` on
    the summed areas, ``np.nanmean`` for the summary (mmseg/evaluation/metrics/iou_metric.py),
    without the final rounding to 2 decimals."""
    areas = []
    for pred, label in zip(preds, labels):
        pred_label, label = torch.as_tensor(pred), torch.as_tensor(label)
        mask = label != ignore_index
        pred_label, label = pred_label[mask], label[mask]
        intersect = pred_label[pred_label == label]
        hist = lambda x: torch.histc(x.float(), bins=num_classes, min=0, max=num_classes - 1)  # noqa: E731
        area_intersect, area_pred, area_label = hist(intersect), hist(pred_label), hist(label)
        areas.append((area_intersect, area_pred + area_label - area_intersect, area_pred, area_label))
    total_intersect, total_union, _, total_label = (sum(a[i] for a in areas) for i in range(4))
    all_acc = (total_intersect.sum() / total_label.sum()).numpy()
    iou = (total_intersect / total_union).numpy()
    acc = (total_intersect / total_label).numpy()
    return {"aAcc": all_acc * 100, "mIoU": np.nanmean(iou) * 100, "mAcc": np.nanmean(acc) * 100, "IoU": iou}


# --------------------------------------------------------------------------------------
# registry and configs
# --------------------------------------------------------------------------------------
def test_registry_names_and_did_you_mean():
    assert set(METRICS) == {"miou", "hungarian_dataset", "hungarian_image", "zeroshot"}
    for name, cls in METRICS.items():
        assert cls.name == name and get_metric(name) is cls
    with pytest.raises(UnknownNameError, match=r"Unknown metric 'hungarian'.*Did you mean 'hungarian_"):
        get_metric("hungarian")


@pytest.mark.parametrize("name", sorted(METRICS))
def test_config_file_matches_params(name):
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "metric" / f"{name}.yaml"))
    assert cfg.pop("name") == name
    cls = METRICS[name]
    defaults = {f.name: f.default for f in dataclasses.fields(cls.Params)}
    assert cfg == defaults
    classes = VOC20 if name == "zeroshot" else names(20)  # zeroshot's default split is auto
    metric = cls(len(classes), classes, IGNORE, cls.Params(**cfg))
    assert metric.compute(metric.zero_state())["mIoU"] is None


# --------------------------------------------------------------------------------------
# miou
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_miou_equals_pixel_loop_reference(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 9))
    preds, labels = adversarial_dataset(rng, num_classes, num_classes)
    metric = make(MeanIoU, num_classes)
    state = summed_counts(metric, preds, labels)
    conf = ref_confusion(preds, labels, num_classes)
    np.testing.assert_array_equal(state["confusion"], np.array(conf))
    ious, accs, aacc = ref_scores_from_confusion(conf)
    out = metric.compute(state)
    assert_percent(out["mIoU"], ref_nanmean(ious))
    assert_percent(out["mAcc"], ref_nanmean(accs))
    assert_percent(out["aAcc"], aacc)
    for name, ref in zip(metric.class_names, ious):
        assert_percent(out["per_class_IoU"][name], ref)
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("seed", range(3))
def test_miou_equals_mmseg_iou_metric(seed):
    rng = np.random.default_rng(100 + seed)
    num_classes = 6
    preds, labels = adversarial_dataset(rng, num_classes, num_classes)
    labels = [np.where(label == 5, 0, label) for label in labels]  # class 5 never in the GT,
    preds.append(np.full((4, 4), 5))  # but predicted: IoU 0, and it counts in the mean
    labels.append(np.full((4, 4), 0))
    metric = make(MeanIoU, num_classes)
    out = metric.compute(summed_counts(metric, preds, labels))
    ref = mmseg_iou_metric(preds, labels, num_classes)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert out[key] == pytest.approx(float(ref[key]), abs=1e-4)  # mmseg accumulates in float32
    for name, ref_iou in zip(metric.class_names, ref["IoU"]):
        assert_percent(out["per_class_IoU"][name], float(ref_iou), abs_tol=1e-4)
    assert out["per_class_IoU"]["class5"] == 0.0


def test_miou_equals_torchmetrics_without_absent_classes():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    rng = np.random.default_rng(7)
    num_classes = 5
    label = torch.from_numpy(rng.integers(0, num_classes, size=(3, 20, 20)))
    label[torch.from_numpy(rng.random((3, 20, 20)) < 0.1)] = IGNORE
    pred = torch.from_numpy(rng.integers(0, num_classes, size=(3, 20, 20)))
    metric = make(MeanIoU, num_classes)
    out = metric.compute(summed_counts(metric, list(pred), list(label)))
    kw = dict(num_classes=num_classes, ignore_index=IGNORE)
    assert out["mIoU"] == pytest.approx(100 * MulticlassJaccardIndex(average="macro", **kw)(pred, label).item(), abs=1e-4)
    assert out["aAcc"] == pytest.approx(100 * MulticlassAccuracy(average="micro", **kw)(pred, label).item(), abs=1e-4)
    assert out["mAcc"] == pytest.approx(100 * MulticlassAccuracy(average="macro", **kw)(pred, label).item(), abs=1e-4)


def test_miou_hand_worked_example():
    # GT          pred        confusion (rows GT, cols pred), pixel (1, 2) ignored
    # 0 0 1       0 1 1       [[1, 1, 0],
    # 1 1 255     1 0 2        [1, 2, 0],    class 2 predicted but absent: IoU 0
    # 1 1 1       1 1 2        [0, 0, 0]] + one pixel GT 1 -> pred 2
    label = np.array([[0, 0, 1], [1, 1, 255], [1, 1, 1]])
    pred = np.array([[0, 1, 1], [1, 0, 2], [1, 1, 2]])
    metric = make(MeanIoU, 4)  # class 3: neither in GT nor predicted -> NaN, left out
    out = metric.compute(metric.counts(pred, label, "hand"))
    # class 0: TP 1, FN 1, FP 1 -> 1/3 ; class 1: TP 4, FN 2 (one ->0, one ->2), FP 1 -> 4/7
    # class 2: TP 0, FP 1 -> 0 ; aAcc 5/8 ; mAcc mean(1/2, 4/6)
    assert out["per_class_IoU"] == pytest.approx({"class0": 100 / 3, "class1": 400 / 7, "class2": 0.0, "class3": None})
    assert out["mIoU"] == pytest.approx(100 * (1 / 3 + 4 / 7 + 0) / 3)
    assert out["aAcc"] == pytest.approx(100 * 5 / 8)
    assert out["mAcc"] == pytest.approx(100 * (1 / 2 + 4 / 6) / 2)
    assert out["per_class_Acc"]["class2"] is None


def _cityscapes_official(pred_train_ids, gt_label_ids, tmp_path):
    """Run cityscapesscripts' evaluateImgLists on PNG files in the labelIds format."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import trainId2label

    args = copy.copy(cs_eval.args)
    args.evalInstLevelScore = False  # needs *_instanceIds.png; not part of the class IoU
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    to_label_id = np.zeros(256, dtype=np.uint8)
    for train_id, lab in trainId2label.items():
        if 0 <= train_id < 19:
            to_label_id[train_id] = lab.id
    pred_files, gt_files = [], []
    for i, (pred, gt) in enumerate(zip(pred_train_ids, gt_label_ids)):
        pred_files.append(str(tmp_path / f"city_{i}_pred_labelIds.png"))
        gt_files.append(str(tmp_path / f"city_{i}_gtFine_labelIds.png"))
        Image.fromarray(to_label_id[pred]).save(pred_files[-1])
        Image.fromarray(gt.astype(np.uint8)).save(gt_files[-1])
    return cs_eval.evaluateImgLists(pred_files, gt_files, args)


def test_miou_equals_official_cityscapes_evaluation(tmp_path):
    from cityscapesscripts.helpers.labels import labels as cs_labels

    rng = np.random.default_rng(19)
    label_ids = [lab.id for lab in cs_labels if lab.id >= 0]
    to_train_id = np.full(256, IGNORE, dtype=np.int64)
    train_names = [""] * 19
    for lab in cs_labels:
        if 0 <= lab.trainId < 19:
            to_train_id[lab.id] = lab.trainId
            train_names[lab.trainId] = lab.name
    present = [i for i in label_ids if i not in (26, 24)]  # car, person never in the GT
    gts = [rng.choice(present, size=(24, 32)) for _ in range(3)]  # incl. ignored ids 0..6, 9, ...
    preds = [rng.integers(0, 19, size=(24, 32)) for _ in range(3)]
    preds[0][:6] = to_train_id[gts[0][:6]] % 19  # some agreement
    official = _cityscapes_official(preds, gts, tmp_path)

    metric = MeanIoU(19, train_names, IGNORE)
    out = metric.compute(summed_counts(metric, preds, [to_train_id[g] for g in gts]))
    for name in train_names:
        assert_percent(out["per_class_IoU"][name], official["classScores"][name])
    assert out["per_class_IoU"]["person"] == 0.0  # predicted, absent from GT: counted as 0
    assert_percent(out["mIoU"], official["averageScoreClasses"])


# --------------------------------------------------------------------------------------
# hungarian_image (DiffSeg)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,extra_segments", [(0, 0), (1, 3), (2, 7), (3, 1)])
def test_hungarian_image_equals_reference(seed, extra_segments):
    rng = np.random.default_rng(200 + seed)
    num_classes = int(rng.integers(2, 8))
    preds, labels = adversarial_dataset(rng, num_classes, num_classes + extra_segments)
    metric = make(HungarianImage, num_classes)
    state = summed_counts(metric, preds, labels)
    tp, fp, fn, valid = ref_hungarian_image(preds, labels, num_classes)
    np.testing.assert_array_equal(state["tp"], tp)
    np.testing.assert_array_equal(state["fp"], fp)
    np.testing.assert_array_equal(state["fn"], fn)
    assert int(state["valid"][0]) == valid
    ious, miou, acc = ref_matched_scores(tp, fp, fn, valid)
    out = metric.compute(state)
    assert_percent(out["mIoU"], miou)
    assert_percent(out["ACC"], acc)
    for name, ref in zip(metric.class_names, ious):
        assert_percent(out["per_class_IoU"][name], ref)
    json.dumps(out, allow_nan=False)


def test_hungarian_image_hand_worked_extra_segments_and_absent_class():
    # 3 classes, the GT uses 0 and 1 only; segment ids 0..4, so P = 5. Row 2 is ignored.
    # H (rows GT, cols segments): class 0: seg0 4, seg2 1 ; class 1: seg1 3, seg3 2 ;
    # class 2: all zero. Matching: 0 -> seg0, 1 -> seg1, 2 -> one leftover column.
    label = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [255, 255, 255, 255, 255]])
    pred = np.array([[0, 0, 0, 0, 2], [1, 1, 1, 3, 3], [4, 4, 1, 0, 0]])
    metric = make(HungarianImage, 3)
    counts = metric.counts(pred, label, "hand")
    # ignored pixels (row 2) count nowhere, even though segment 4 lies only there
    assert counts["tp"][:2].tolist() == [4, 3] and counts["fn"][:2].tolist() == [1, 2]
    assert counts["fp"][:2].tolist() == [0, 0] and counts["valid"].tolist() == [10]
    # extra segments 2 and 3 are unmatched for classes 0/1: their pixels are only FN above;
    # the absent class 2 takes one leftover column: TP 0, FN 0, FP = that column's pixels
    assert counts["tp"][2] == 0 and counts["fn"][2] == 0 and counts["fp"][2] in (0, 1, 2)
    out = metric.compute(counts)
    assert out["ACC"] == pytest.approx(100 * 7 / 10)
    assert out["per_class_IoU"]["class0"] == pytest.approx(80.0)
    assert out["per_class_IoU"]["class1"] == pytest.approx(60.0)


def test_hungarian_image_absent_class_collects_leftover_segment_as_fp():
    # DiffSeg quirk, kept on purpose: GT all class 0, two equal segments; class 1 (absent)
    # is matched to the other segment and gets its 2 pixels as FP -> IoU 0, not NaN.
    label = np.zeros((2, 2), dtype=np.int64)
    pred = np.array([[0, 0], [1, 1]])
    metric = make(HungarianImage, 2)
    counts = metric.counts(pred, label, "quirk")
    assert counts["tp"].tolist() == [2, 0] and counts["fn"].tolist() == [2, 0] and counts["fp"].tolist() == [0, 2]
    assert metric.compute(counts)["mIoU"] == pytest.approx(25.0)


def test_hungarian_image_segment_only_on_ignored_pixels():
    # segment 9 lies only on ignored pixels: an empty column of H (P = 10, as DiffSeg's
    # _fast_hist takes the max over all pixels); segment 2 covers class 0 exactly
    label = np.array([[0, 0, 255], [1, 1, 255]])
    pred = np.array([[2, 2, 9], [0, 1, 9]])
    counts = make(HungarianImage, 2).counts(pred, label, "wide")
    tp, fp, fn, valid = ref_hungarian_image([pred], [label], 2)
    assert counts["tp"].tolist() == tp and counts["fp"].tolist() == fp and counts["fn"].tolist() == fn
    assert tp == [2, 1] and fp == [0, 0] and fn == [0, 1] and valid == 4


# --------------------------------------------------------------------------------------
# hungarian_dataset (STEGO / PiCIE)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,extra_clusters", [(0, 0), (1, 0), (2, 3), (3, 6), (4, -2)])
def test_hungarian_dataset_equals_reference(seed, extra_clusters):
    rng = np.random.default_rng(300 + seed)
    num_classes = int(rng.integers(3, 8))
    num_clusters = num_classes + extra_clusters
    preds, labels = adversarial_dataset(rng, num_classes, num_clusters)
    metric = make(HungarianDataset, num_classes, num_clusters=num_clusters)
    state = summed_counts(metric, preds, labels)
    assert state["histogram"].shape == (num_clusters, num_classes)
    tp, fp, fn, valid, class_of_cluster = ref_hungarian_dataset(preds, labels, num_classes, num_clusters)
    ious, miou, acc = ref_matched_scores(tp, fp, fn, valid)
    out = metric.compute(state)
    assert_percent(out["mIoU"], miou)
    assert_percent(out["ACC"], acc)
    for name, ref in zip(metric.class_names, ious):
        assert_percent(out["per_class_IoU"][name], ref)
    assert out["assignment"] == [class_of_cluster.get(k) for k in range(num_clusters)]
    json.dumps(out, allow_nan=False)


def test_hungarian_dataset_equals_stego_when_k_equals_c():
    """STEGO's UnsupervisedMetrics.compute (src/utils.py) for extra_clusters = 0."""
    rng = np.random.default_rng(5)
    preds, labels = adversarial_dataset(rng, 6, 6)
    metric = make(HungarianDataset, 6)
    state = summed_counts(metric, preds, labels)
    stats = state["histogram"]  # STEGO's stats: (clusters, classes)
    assignments = linear_sum_assignment(stats, maximize=True)
    histogram = stats[np.argsort(assignments[1]), :]
    tp = np.diag(histogram)
    fp = histogram.sum(0) - tp
    fn = histogram.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    out = metric.compute(state)
    assert out["mIoU"] == pytest.approx(100 * iou[~np.isnan(iou)].mean())
    assert out["ACC"] == pytest.approx(100 * tp.sum() / histogram.sum())


def test_hungarian_dataset_hand_worked_more_clusters_than_classes():
    # 2 classes, 3 clusters. Histogram (rows clusters, cols classes):
    #   cluster 0: [5, 1]  -> class 0      cluster 1: [0, 4] -> class 1
    #   cluster 2: [2, 3]  -> unmatched: its 2 + 3 pixels are FN of classes 0 and 1, no FP
    label = np.array([0] * 5 + [1] + [1] * 4 + [0] * 2 + [1] * 3).reshape(3, 5)
    pred = np.array([0] * 6 + [1] * 4 + [2] * 5).reshape(3, 5)
    metric = make(HungarianDataset, 2, num_clusters=3)
    out = metric.compute(metric.counts(pred, label, "k3"))
    assert out["assignment"] == [0, 1, None]
    # class 0: TP 5, FP 1 (cluster 0's class-1 pixel), FN 2 ; class 1: TP 4, FP 0, FN 1 + 3
    assert out["per_class_IoU"]["class0"] == pytest.approx(100 * 5 / 8)
    assert out["per_class_IoU"]["class1"] == pytest.approx(100 * 4 / 8)
    assert out["ACC"] == pytest.approx(100 * 9 / 15)
    assert out["mIoU"] == pytest.approx(100 * (5 / 8 + 4 / 8) / 2)


def test_hungarian_dataset_fewer_clusters_than_classes():
    label = np.array([[0, 0, 1, 1, 2, 2]])
    pred = np.array([[0, 0, 1, 1, 1, 1]])
    metric = make(HungarianDataset, 3, num_clusters=2)
    out = metric.compute(metric.counts(pred, label, "k2"))
    # class 2 (or 1) gets no cluster: TP = FP = 0, FN = its pixels -> IoU 0
    assert sorted(out["per_class_IoU"].values()) == pytest.approx([0.0, 50.0, 100.0])
    assert out["assignment"].count(None) == 0 and len(out["assignment"]) == 2


@pytest.mark.parametrize("bad", [0, -3, 2.5, "many", True])
def test_hungarian_dataset_rejects_bad_num_clusters(bad):
    with pytest.raises(ValueError, match="num_clusters"):
        HungarianDataset(3, names(3), IGNORE, HungarianDataset.Params(num_clusters=bad))


# --------------------------------------------------------------------------------------
# zeroshot
# --------------------------------------------------------------------------------------
def coco171_names():
    unseen = [s[0] for s in SPLIT_PRESETS["cocostuff156_15"].unseen]
    return unseen + [f"stuff{i}" for i in range(171 - len(unseen))]


def test_zeroshot_presets_resolve_and_auto_detect():
    voc = ZeroShot(20, VOC20, IGNORE, ZeroShot.Params(split="voc15_5"))
    assert voc.split == "voc15_5"
    assert [n for n, u in zip(VOC20, voc.unseen_mask) if u] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert ZeroShot(20, VOC20, IGNORE, ZeroShot.Params()).split == "voc15_5"
    coco = coco171_names()
    auto = ZeroShot(171, coco, IGNORE, ZeroShot.Params())
    assert auto.split == "cocostuff156_15" and auto.unseen_mask.sum() == 15
    # other spellings of the same class
    spelled = [{"pottedplant": "potted plant", "tvmonitor": "TV monitor"}.get(n, n) for n in VOC20]
    assert ZeroShot(20, spelled, IGNORE, ZeroShot.Params(split="voc15_5")).unseen_mask.sum() == 5


def test_zeroshot_rejects_bad_splits():
    with pytest.raises(ValueError, match=r"defined on 20 classes.*has 21"):
        ZeroShot(21, ["background"] + VOC20, IGNORE, ZeroShot.Params(split="voc15_5"))
    with pytest.raises(ValueError, match=r"unknown split 'voc15'.*Did you mean 'voc15_5'"):
        ZeroShot(20, VOC20, IGNORE, ZeroShot.Params(split="voc15"))
    with pytest.raises(ValueError, match=r"'shep'.*Did you mean 'sheep'"):
        ZeroShot(20, VOC20, IGNORE, ZeroShot.Params(unseen=["shep"]))
    with pytest.raises(ValueError, match="not both"):
        ZeroShot(20, VOC20, IGNORE, ZeroShot.Params(split="voc15_5", unseen=["sheep"]))
    with pytest.raises(ValueError, match="more than once"):
        ZeroShot(20, VOC20, IGNORE, ZeroShot.Params(unseen=["sheep", "Sheep"]))
    with pytest.raises(ValueError, match="no split preset fits"):
        ZeroShot(5, names(5), IGNORE, ZeroShot.Params())
    with pytest.raises(ValueError, match="every class is unseen"):
        ZeroShot(2, names(2), IGNORE, ZeroShot.Params(unseen=names(2)))
    renamed = [n if n != "sofa" else "settee" for n in VOC20]
    with pytest.raises(ValueError, match="'sofa'"):
        ZeroShot(20, renamed, IGNORE, ZeroShot.Params(split="voc15_5"))


@pytest.mark.parametrize("seed", range(3))
def test_zeroshot_equals_reference(seed):
    rng = np.random.default_rng(400 + seed)
    num_classes = 7
    unseen = sorted(rng.choice(num_classes, size=3, replace=False).tolist())
    preds, labels = adversarial_dataset(rng, num_classes, num_classes)
    metric = make(ZeroShot, num_classes, unseen=[f"class{i}" for i in unseen])
    out = metric.compute(summed_counts(metric, preds, labels))
    ious, _, _ = ref_scores_from_confusion(ref_confusion(preds, labels, num_classes))
    seen_m = ref_nanmean([v for i, v in enumerate(ious) if i not in unseen])
    unseen_m = ref_nanmean([v for i, v in enumerate(ious) if i in unseen])
    assert_percent(out["mIoU_seen"], seen_m)
    assert_percent(out["mIoU_unseen"], unseen_m)
    assert_percent(out["mIoU"], ref_nanmean(ious))
    assert out["hIoU"] == pytest.approx(2 * 100 * seen_m * 100 * unseen_m / (100 * seen_m + 100 * unseen_m))
    assert out["unseen_classes"] == [f"class{i}" for i in unseen]
    json.dumps(out, allow_nan=False)


def test_zeroshot_hand_worked_example():
    # classes a (seen), b (seen), c (unseen). a: IoU 1, b: TP 1 FN 1 -> 1/2, c: TP 1 FP 1 -> 1/2
    label = np.array([[0, 0, 1, 1, 2]])
    pred = np.array([[0, 0, 1, 2, 2]])
    metric = ZeroShot(3, ["a", "b", "c"], IGNORE, ZeroShot.Params(unseen=["c"]))
    out = metric.compute(metric.counts(pred, label, "zs"))
    assert out["mIoU_seen"] == pytest.approx(75.0)
    assert out["mIoU_unseen"] == pytest.approx(50.0)
    assert out["hIoU"] == pytest.approx(60.0)
    assert out["mIoU"] == pytest.approx(100 * 2 / 3)
    # no unseen pixel at all: unseen mIoU undefined, hIoU undefined
    empty = metric.compute(metric.counts(np.array([[0, 1]]), np.array([[0, 1]]), "seen-only"))
    assert empty["mIoU_unseen"] is None and empty["hIoU"] is None and empty["mIoU_seen"] == 100.0


# --------------------------------------------------------------------------------------
# state: summable, sparse-friendly, validated
# --------------------------------------------------------------------------------------
ALL_METRICS = [
    (MeanIoU, {}, 4),
    (HungarianImage, {}, 7),
    (HungarianDataset, {"num_clusters": 6}, 6),
    (ZeroShot, {"unseen": ["class1"]}, 4),
]


@pytest.mark.parametrize("cls,params,num_pred", ALL_METRICS)
def test_state_is_summable_over_shards_and_sparse(cls, params, num_pred):
    rng = np.random.default_rng(11)
    preds, labels = adversarial_dataset(rng, 4, num_pred, n_images=8)
    metric = make(cls, 4, **params)
    whole = summed_counts(metric, preds, labels)
    shards = [summed_counts(metric, preds[i::3], labels[i::3]) for i in range(3)]
    merged = metric.zero_state()
    for shard in shards:
        metric.add_(merged, shard)
    for key in whole:
        np.testing.assert_array_equal(merged[key], whole[key])
    # per-image counts survive a (flat index, value) round trip and sum to the same result
    restored = metric.zero_state()
    for i, (pred, label) in enumerate(zip(preds, labels)):
        for key, arr in metric.counts(pred, label, f"img{i}").items():
            idx = np.flatnonzero(arr)
            np.add.at(restored[key].reshape(-1), idx, arr.reshape(-1)[idx])
    assert metric.compute(restored) == metric.compute(whole)


@pytest.mark.parametrize("cls,params,num_pred", ALL_METRICS)
def test_torch_and_numpy_inputs_of_any_int_dtype_agree(cls, params, num_pred):
    rng = np.random.default_rng(12)
    metric = make(cls, 4, **params)
    label = rng.integers(0, 4, size=(9, 11))
    label[0] = IGNORE
    pred = rng.integers(0, num_pred, size=(9, 11))
    ref = metric.counts(pred, label, "np")
    variants = [
        (torch.from_numpy(pred), torch.from_numpy(label)),
        (pred.astype(np.int32), label.astype(np.uint8)),
        (torch.from_numpy(pred).to(torch.uint8), torch.from_numpy(label).to(torch.int16)),
        (pred.T.copy().T, np.asfortranarray(label)),
    ]
    for p, lab in variants:
        got = metric.counts(p, lab, "variant")
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key])


@pytest.mark.parametrize("cls,params,num_pred", ALL_METRICS)
def test_bad_inputs_raise_naming_image_and_values(cls, params, num_pred):
    metric = make(cls, 4, **params)
    ok = np.zeros((3, 4), dtype=np.int64)
    bad_label = np.array([[0, 1, 7, 255], [-2, 0, 0, 9], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"'img_42'.*label values \[-2, 7, 9\].*outside \[0, 4\)"):
        metric.counts(ok, bad_label, "img_42")
    with pytest.raises(ValueError, match=r"'img_7'.*prediction shape \(3, 4\).*label shape \(4, 3\)"):
        metric.counts(ok, np.zeros((4, 3), dtype=np.int64), "img_7")
    neg = ok.copy()
    neg[1, 1] = -1
    with pytest.raises(ValueError, match=r"'img_n'.*negative prediction values \[-1\]"):
        metric.counts(neg, ok, "img_n")
    with pytest.raises(TypeError, match="integers.*float"):
        metric.counts(ok.astype(np.float32), ok, "img_f")
    with pytest.raises(ValueError, match=r"2-D.*\(1, 3, 4\)"):
        metric.counts(ok[None], ok[None], "img_b")


@pytest.mark.parametrize("cls,params,limit", [(MeanIoU, {}, 4), (ZeroShot, {"unseen": ["class0"]}, 4),
                                              (HungarianDataset, {"num_clusters": 6}, 6)])
def test_prediction_beyond_class_or_cluster_count_raises(cls, params, limit):
    metric = make(cls, 4, **params)
    label = np.full((2, 3), IGNORE)  # even on ignored pixels
    pred = np.array([[0, limit, 1], [limit + 3, 0, 0]])
    with pytest.raises(ValueError, match=rf"'img_p'.*prediction values \[{limit}, {limit + 3}\].*0\.\.{limit - 1}"):
        metric.counts(pred, label, "img_p")


def test_hungarian_image_accepts_many_segments_but_bounds_ids():
    metric = make(HungarianImage, 3)
    pred = np.array([[0, 40], [17, 3]])
    label = np.array([[0, 1], [2, 2]])
    assert metric.counts(pred, label, "ok")["valid"].tolist() == [4]
    with pytest.raises(ValueError, match="relabel"):
        metric.counts(np.array([[0, 10**6]]), np.array([[0, 1]]), "huge")


def test_all_ignore_dataset_gives_undefined_numbers():
    labels = [np.full((3, 3), IGNORE)] * 2
    for cls, params, num_pred in ALL_METRICS:
        metric = make(cls, 4, **params)
        out = metric.compute(summed_counts(metric, [np.zeros((3, 3), dtype=np.int64)] * 2, labels))
        assert out["mIoU"] is None and all(v is None for v in out["per_class_IoU"].values())


def test_compute_rejects_state_of_another_configuration():
    metric = make(MeanIoU, 4)
    with pytest.raises(ValueError, match=r"'confusion' has shape \(5, 5\), expected \(4, 4\)"):
        metric.compute({"confusion": np.zeros((5, 5), dtype=np.int64)})
    with pytest.raises(ValueError, match="missing"):
        make(HungarianImage, 4).compute({"tp": np.zeros(4), "fp": np.zeros(4), "fn": np.zeros(4)})


# -- hungarian_image with DiffCut's many-to-one background ----------------------------------
def _ref_diffcut_background(pred, label, n_class):
    """eval_diffcut.py with its label convention (background = -1, classes 0..n-2), then the
    final tools/utils.py hungarian_matching with background as class n-1."""
    from scipy.optimize import linear_sum_assignment as lsa

    def fast_hist(t, p, n):
        pn = max(n, p.max() + 1)
        m = (t >= 0) & (t < n)
        return np.bincount(pn * t[m] + p[m], minlength=n * pn).reshape(n, pn)

    hist = fast_hist(label, pred, n_class - 1)
    _, col = lsa(hist, maximize=True)
    hist = hist[:, col]
    assigned = [col[i] for i in np.where(hist.max(axis=1) > 0)[0]]
    pred = pred.copy()
    bg_label = pred.max() + 1
    for c in set(np.unique(pred)) - set(assigned):
        pred[pred == c] = bg_label
    label = label.copy()
    label[label == -1] = n_class - 1
    hist = fast_hist(label, pred, n_class)
    row, col = lsa(hist, maximize=True)
    tp = hist[row, col]
    fn = hist.sum(1) - tp
    fp = hist[:, col].sum(0) - np.diag(hist[:, col])
    return tp, fp, fn


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hungarian_image_background_equals_diffcut_rule(seed):
    from benchmark.metrics.hungarian import HungarianImage, HungarianImageParams

    rng = np.random.default_rng(seed)
    n_class = 5  # 4 foreground classes + background
    label = rng.integers(-1, 3, size=(12, 12))  # background (-1) and classes 0..2 (3 absent)
    label[:4] = -1
    pred = rng.integers(0, 7, size=(12, 12))
    tp, fp, fn = _ref_diffcut_background(pred.ravel(), label.ravel(), n_class)
    # ours: the background as the last class, as DiffCut's relabelled maps (same solver tie order)
    ours_label = np.where(label == -1, n_class - 1, label)
    names = [f"c{i}" for i in range(n_class)]
    metric = HungarianImage(n_class, names, 255, HungarianImageParams(background=n_class - 1))
    counts = metric.counts(torch.from_numpy(pred), torch.from_numpy(ours_label), "x")
    assert counts["tp"].tolist() == tp.tolist()
    assert counts["fp"].tolist() == fp.tolist()
    assert counts["fn"].tolist() == fn.tolist()
    with pytest.raises(ValueError, match="metric.background=7"):
        HungarianImage(n_class, [f"c{i}" for i in range(n_class)], 255, HungarianImageParams(background=7))
