"""Shared, vectorised building blocks of the metrics: input checks, joint histograms, IoU.

Every metric counts one image with a single ``np.bincount`` over ``row * n_cols + col`` of
the valid pixels (the torchmetrics confusion-matrix idiom) and turns summed counts into
percentages with the helpers at the bottom. Nothing here loops over pixels.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

#: how many offending values an error message lists before eliding the rest
_MAX_LISTED = 12


def _listed(values: np.ndarray) -> str:
    uniq = np.unique(values)
    shown = ", ".join(str(int(v)) for v in uniq[:_MAX_LISTED])
    more = f", ... ({len(uniq)} distinct values)" if len(uniq) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def as_int_array(x: Any, what: str, image_id: str) -> np.ndarray:
    """A 2-D integer numpy view of a torch tensor or array (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"image {image_id!r}: {what} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"image {image_id!r}: {what} must be a 2-D (H, W) map, got shape {tuple(arr.shape)}")
    return arr


def flat_pair(pred: Any, label: Any, image_id: str) -> Tuple[np.ndarray, np.ndarray]:
    """pred, label as flat arrays (dtype kept) after checking dtypes and equal (H, W) shapes.

    The dtype is kept (no full-size int64 copies): only the valid pixels are widened, in
    ``joint_histogram``; this keeps a 512 x 512 image's temporaries small.
    """
    pred_arr = as_int_array(pred, "prediction", image_id)
    label_arr = as_int_array(label, "label", image_id)
    if pred_arr.shape != label_arr.shape:
        raise ValueError(
            f"image {image_id!r}: prediction shape {tuple(pred_arr.shape)} does not match "
            f"label shape {tuple(label_arr.shape)}"
        )
    return pred_arr.reshape(-1), label_arr.reshape(-1)


def check_pred_range(pred: np.ndarray, upper: Optional[int], image_id: str, what: str) -> None:
    """Raise unless every predicted value (valid pixel or not) lies in [0, upper)."""
    if pred.size == 0:
        return
    if int(pred.min()) < 0:
        raise ValueError(f"image {image_id!r}: negative prediction values {_listed(pred[pred < 0])}")
    if upper is not None and int(pred.max()) >= upper:
        raise ValueError(
            f"image {image_id!r}: prediction values {_listed(pred[pred >= upper])} are not valid {what} "
            f"(expected 0..{upper - 1})"
        )


def valid_pixels(
    pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int, image_id: str
) -> Tuple[np.ndarray, np.ndarray]:
    """(pred, label) restricted to pixels whose label is not ``ignore_index``.

    Raises if a non-ignored label lies outside [0, num_classes): such a value means the
    dataset's label mapping is wrong, and silently dropping it would change the numbers.
    """
    valid = label != ignore_index
    label_v = label[valid]
    if label_v.size and (int(label_v.min()) < 0 or int(label_v.max()) >= num_classes):
        bad = label_v[(label_v < 0) | (label_v >= num_classes)]
        raise ValueError(
            f"image {image_id!r}: label values {_listed(bad)} are outside [0, {num_classes}) "
            f"and are not the ignore index {ignore_index}"
        )
    return pred[valid], label_v


def decided(pred: np.ndarray, void_value: Optional[int]) -> np.ndarray:
    """The predicted values other than ``void_value`` (all of them when it is None)."""
    return pred if void_value is None else pred[pred != void_value]


def split_void(
    pred_v: np.ndarray, label_v: np.ndarray, void_value: Optional[int], num_classes: int
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(pred, label) of the valid pixels with a decision, and ``undecided`` (C,): per label
    class, the valid pixels predicted ``void_value`` (None when no void value is set).

    mmseg's ``IoUMetric.intersect_and_union`` (mmseg/evaluation/metrics/iou_metric.py)
    histograms the prediction with ``torch.histc(min=0, max=num_classes - 1)``, which drops a
    value outside 0..C-1 from ``area_pred_label`` and ``area_intersect`` while the pixel stays
    in ``area_label``: a miss of its label's class (FN, in the aAcc / Acc denominators) that
    is no class's FP. ``undecided`` carries exactly those pixels.
    """
    if void_value is None:
        return pred_v, label_v, None
    void = pred_v == void_value
    undecided = np.bincount(label_v[void].astype(np.int64), minlength=num_classes).astype(np.int64)
    return pred_v[~void], label_v[~void], undecided


def joint_histogram(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """(n_rows, n_cols) int64 counts of (row, col) pairs: one bincount over row * n_cols + col."""
    flat = np.bincount(rows.astype(np.int64) * n_cols + cols, minlength=n_rows * n_cols)
    return flat.reshape(n_rows, n_cols).astype(np.int64, copy=False)


# -- from summed counts to numbers ---------------------------------------------------------
def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den == 0 (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-class TP / (TP + FP + FN); NaN for a class with an empty union."""
    return ratio(tp, tp + fp + fn)


def percent(value: float) -> Optional[float]:
    """A fraction as a plain-float percentage; NaN (undefined) becomes None."""
    value = float(value)
    return None if np.isnan(value) else 100.0 * value


def nanmean_percent(values: np.ndarray) -> Optional[float]:
    """Mean over the defined (non-NaN) entries, as a percentage; None if none is defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return None if defined.size == 0 else 100.0 * float(defined.mean())


def per_class(names: Sequence[str], values: np.ndarray) -> Dict[str, Optional[float]]:
    """{class name: percentage or None}."""
    return {name: percent(v) for name, v in zip(names, values)}


def harmonic_mean(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def checked_state(
    state: Mapping[str, Any], shapes: Mapping[str, Tuple[int, ...]], metric: str
) -> Dict[str, np.ndarray]:
    """The state as int64 arrays, after checking it has exactly the expected keys and shapes."""
    missing = sorted(set(shapes) - set(state))
    extra = sorted(set(state) - set(shapes))
    if missing or extra:
        raise ValueError(
            f"metric {metric}: state keys {sorted(state)} do not match the expected {sorted(shapes)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    out = {}
    for key, shape in shapes.items():
        arr = np.asarray(state[key])
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"metric {metric}: state {key!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        out[key] = arr.astype(np.int64, copy=False)
    return out
