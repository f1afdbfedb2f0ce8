"""method.void_value: a "no decision" value in predictions scored as mmseg scores it (issue 14.7)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.metrics import HungarianDataset, HungarianImage, MeanIoU, ZeroShot

VOID = 255


def _mmseg_reference(preds, labels, num_classes, ignore_index):
    """IoU / Acc / aAcc by mmseg's rule (IoUMetric.intersect_and_union + total_area_to_metrics,
    mmseg/evaluation/metrics/iou_metric.py): torch.histc over [0, C-1] of the valid pixels."""
    totals = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(4)]
    for pred, label in zip(preds, labels):
        pred, label = torch.as_tensor(pred), torch.as_tensor(label)
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        intersect = pred[pred == label]
        hist = [torch.histc(x.double(), bins=num_classes, min=0, max=num_classes - 1) for x in (intersect, pred, label)]
        area_intersect, area_pred, area_label = hist
        for total, part in zip(totals, (area_intersect, area_pred + area_label - area_intersect, area_pred, area_label)):
            total += part
    inter, union, _, area_label = totals
    return (inter / union).numpy(), (inter / area_label).numpy(), float(inter.sum() / area_label.sum())


def _random_case(seed, num_classes=5, n=4, size=(9, 11)):
    rng = np.random.default_rng(seed)
    labels = [rng.integers(0, num_classes, size) for _ in range(n)]
    preds = [rng.integers(0, num_classes, size) for _ in range(n)]
    for label, pred in zip(labels, preds):
        label[rng.random(size) < 0.15] = 255  # ignored pixels
        pred[rng.random(size) < 0.25] = VOID  # no decision, on valid and ignored pixels alike
    return preds, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_with_void_value_equals_mmseg(seed):
    preds, labels = _random_case(seed)
    metric = MeanIoU(5, list("abcde"), 255, void_value=VOID)
    state = metric.zero_state()
    for p, l in zip(preds, labels):
        metric.add_(state, metric.counts(p, l, "img"))
    got = metric.compute(state)
    iou, acc, aacc = _mmseg_reference(preds, labels, 5, 255)
    np.testing.assert_allclose([got["per_class_IoU"][c] for c in "abcde"], 100 * iou)
    np.testing.assert_allclose([got["per_class_Acc"][c] for c in "abcde"], 100 * acc)
    assert got["aAcc"] == pytest.approx(100 * aacc)
    assert got["mIoU"] == pytest.approx(100 * np.nanmean(iou)) and got["mAcc"] == pytest.approx(100 * np.nanmean(acc))
    # zeroshot shares the rule
    zs = ZeroShot(5, list("abcde"), 255, ZeroShot.Params(unseen=["e"]), void_value=VOID)
    assert zs.compute(state)["mIoU"] == pytest.approx(got["mIoU"])


def test_strict_default_refuses_the_void_value_even_on_ignored_pixels():
    label = np.array([[0, 255]])
    with pytest.raises(ValueError, match=r"prediction values \[255\] are not valid class ids"):
        MeanIoU(2, ["a", "b"], 255).counts(np.array([[0, 255]]), label, "img")
    with pytest.raises(ValueError, match=r"prediction values \[7\].*nor method.void_value=255"):
        MeanIoU(2, ["a", "b"], 255, void_value=VOID).counts(np.array([[7, 255]]), label, "img")


def test_void_value_that_is_a_class_id_is_refused():
    with pytest.raises(ValueError, match=r"method.void_value=3 is one of the valid class ids 0..4"):
        MeanIoU(5, list("abcde"), 255, void_value=3)
    with pytest.raises(ValueError, match=r"method.void_value=6 is one of the valid cluster ids 0..7"):
        HungarianDataset(5, list("abcde"), 255, HungarianDataset.Params(num_clusters=8), void_value=6)


def test_hungarian_metrics_count_void_pixels_as_misses():
    # label: class 0 on the left 2 columns, class 1 on the right 2; one ignored pixel
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[4, 4, 7, 7], [4, VOID, 7, VOID], [4, 4, 7, VOID]])
    # segment 4 -> class 0 (TP 5, FN 1 void), segment 7 -> class 1 (TP 4, FN 1 void); 11 valid pixels
    image = HungarianImage(2, ["a", "b"], 255, void_value=VOID)
    counts = image.counts(pred, label, "img")
    assert counts["tp"].tolist() == [5, 4] and counts["fn"].tolist() == [1, 1] and counts["fp"].tolist() == [0, 0]
    assert counts["valid"].tolist() == [11]
    m = image.compute(counts)
    assert m["per_class_IoU"] == {"a": pytest.approx(500 / 6), "b": pytest.approx(80.0)}
    assert m["ACC"] == pytest.approx(900 / 11)
    dataset = HungarianDataset(2, ["a", "b"], 255, HungarianDataset.Params(num_clusters=8), void_value=VOID)
    m = dataset.compute(dataset.counts(pred, label, "img"))
    assert m["per_class_IoU"] == {"a": pytest.approx(500 / 6), "b": pytest.approx(80.0)}
    assert m["ACC"] == pytest.approx(900 / 11) and m["assignment"][4] == 0 and m["assignment"][7] == 1


def test_void_value_from_the_cli_with_report_recompute(tmp_path):
    from benchmark.compose import run_with_overrides
    from benchmark.report import recompute

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "images" / "img0.png")
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    Image.fromarray(label, mode="L").save(root / "labels" / "img0.png")
    (root / "classes.txt").write_text("left\nright\n")
    pred = np.array([[0, VOID, 1, 1], [0, 0, VOID, VOID]], np.uint8)  # the last VOID lies on an ignored pixel
    (tmp_path / "preds").mkdir()
    Image.fromarray(pred, mode="L").save(tmp_path / "preds" / "img0.png")
    args = ["dataset=folder", f"dataset.root={root}", "dataset.classes_file=classes.txt", "method=predictions",
            f"method.dir={tmp_path / 'preds'}", "metric=miou", "run.progress=false"]
    with pytest.raises(ValueError, match=r"prediction values \[255\]"):
        run_with_overrides(args, tmp_path / "strict")
    out = run_with_overrides(args + ["method.void_value=255"], tmp_path / "run")
    m = out.payload["results"][0]["metrics"]
    # left: TP 3, FN 1 (void); right: TP 2, FN 1 (void); 7 valid pixels, no FP
    assert m["per_class_IoU"] == {"left": pytest.approx(75.0), "right": pytest.approx(200 / 3)}
    assert m["aAcc"] == pytest.approx(500 / 7) and m["per_class_Acc"]["right"] == pytest.approx(200 / 3)
    assert out.payload["void_value"] == 255
    assert recompute(tmp_path / "run")["results"] == out.payload["results"]
    with pytest.raises(ValueError, match=r"method.void_value=1 is one of the valid class ids 0..1"):
        run_with_overrides(args + ["method.void_value=1"], tmp_path / "clash")
