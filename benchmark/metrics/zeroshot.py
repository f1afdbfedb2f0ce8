"""metric=zeroshot: seen / unseen / harmonic mIoU from one joint confusion matrix.

The state and per-class IoU are those of ``metric=miou`` (one C x C confusion over all
classes, the prediction may pick any class). mIoU_seen and mIoU_unseen are nan-means of
the per-class IoU over the seen and the unseen classes; hIoU = 2 S U / (S + U).

Splits: ``split: voc15_5`` (VOC20 indexing, background ignored: 20 classes, 5 unseen),
``split: cocostuff156_15`` (COCO-Stuff 171), or a custom ``unseen: [names]`` list for any
dataset. ``split: auto`` (default) takes ``unseen`` when given, otherwise the preset whose
class count and unseen names fit the dataset's class list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from benchmark.registry import did_you_mean

from .counting import harmonic_mean, nanmean_percent, per_class
from .miou import MeanIoU


@dataclass(frozen=True)
class SplitPreset:
    num_classes: int
    #: each unseen class as its canonical name plus accepted spellings
    unseen: Tuple[Tuple[str, ...], ...]
    source: str


SPLIT_PRESETS: Dict[str, SplitPreset] = {
    "voc15_5": SplitPreset(
        num_classes=20,
        unseen=(
            ("pottedplant", "potted plant"),
            ("sheep",),
            ("sofa", "couch"),
            ("train",),
            ("tvmonitor", "tv monitor", "television monitor", "tv"),
        ),
        source="PASCAL VOC 2012, 20 object classes (background ignored), last 5 unseen (SPNet, ZegFormer)",
    ),
    "cocostuff156_15": SplitPreset(
        num_classes=171,
        unseen=tuple(
            (name,)
            for name in (
                "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
                "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
            )
        ),
        source="COCO-Stuff 171 classes, 15 unseen (SPNet, ZegFormer)",
    ),
}

AUTO = "auto"


@dataclass
class ZeroShotParams:
    #: a preset name (see SPLIT_PRESETS), or "auto": `unseen` if given, else the fitting preset
    split: str = AUTO
    #: custom unseen class names (requires split: auto)
    unseen: Optional[List[str]] = None


def _norm(name: str) -> str:
    """Spelling-insensitive class-name key: 'TV monitor' == 'tvmonitor', 'wall concrete' == 'wall-concrete'."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _resolve(wanted: Sequence[Sequence[str]], class_names: Sequence[str], where: str) -> List[int]:
    """Indices of the wanted classes (each given as accepted spellings) in class_names."""
    index = {}
    for i, name in enumerate(class_names):
        index.setdefault(_norm(name), i)
    found = []
    for spellings in wanted:
        hits = [index[_norm(s)] for s in spellings if _norm(s) in index]
        if not hits:
            raise ValueError(
                f"metric zeroshot: {where} names unseen class {spellings[0]!r}, which is not a class of this "
                f"dataset." + did_you_mean(spellings[0], class_names) + f" Classes: {', '.join(class_names)}."
            )
        found.append(hits[0])
    if len(set(found)) != len(found):
        dup = sorted({class_names[i] for i in found if found.count(i) > 1})
        raise ValueError(f"metric zeroshot: {where} names the class(es) {dup} more than once")
    return found


def unseen_indices(params: ZeroShotParams, class_names: Sequence[str]) -> Tuple[str, List[int]]:
    """(split description, indices of the unseen classes) for these params and classes."""
    split = AUTO if params.split is None else str(params.split)
    if split != AUTO and split not in SPLIT_PRESETS:
        raise ValueError(
            f"metric zeroshot: unknown split {split!r}. Valid: {AUTO}, {', '.join(SPLIT_PRESETS)}."
            + did_you_mean(split, list(SPLIT_PRESETS) + [AUTO])
        )
    if params.unseen is not None:
        if split != AUTO:
            raise ValueError(
                f"metric zeroshot: give either split={split!r} or a custom unseen list, not both "
                "(set metric.split=auto to use metric.unseen)"
            )
        if isinstance(params.unseen, str) or len(params.unseen) == 0:
            raise ValueError(f"metric zeroshot: unseen must be a non-empty list of class names, got {params.unseen!r}")
        return "custom", _resolve([(n,) for n in params.unseen], class_names, "metric.unseen")
    if split == AUTO:
        for preset_name, preset in SPLIT_PRESETS.items():
            if preset.num_classes == len(class_names):
                try:
                    return preset_name, _resolve(preset.unseen, class_names, f"split {preset_name!r}")
                except ValueError:
                    continue
        raise ValueError(
            f"metric zeroshot: no split preset fits this {len(class_names)}-class dataset "
            f"(presets: {', '.join(f'{k} ({p.num_classes} classes)' for k, p in SPLIT_PRESETS.items())}); "
            "set metric.unseen=[...] to the unseen class names"
        )
    preset = SPLIT_PRESETS[split]
    if preset.num_classes != len(class_names):
        raise ValueError(
            f"metric zeroshot: split {split!r} is defined on {preset.num_classes} classes ({preset.source}), "
            f"but this dataset has {len(class_names)}"
        )
    return split, _resolve(preset.unseen, class_names, f"split {split!r}")


class ZeroShot(MeanIoU):
    """Seen / unseen / harmonic mIoU over one joint confusion matrix."""

    name = "zeroshot"
    Params = ZeroShotParams

    def __init__(self, num_classes: int, class_names, ignore_index: int = 255, params: Any = None,
                 void_value: Optional[int] = None):
        super().__init__(num_classes, class_names, ignore_index, params, void_value)
        self.split, unseen = unseen_indices(self.params, self.class_names)
        self.unseen_mask = np.zeros(self.num_classes, dtype=bool)
        self.unseen_mask[unseen] = True
        if self.unseen_mask.all():
            raise ValueError("metric zeroshot: every class is unseen; at least one seen class is needed")

    def compute(self, state: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        scores, class_iou = self.scores(state)
        scores.pop("per_class_Acc")
        seen = nanmean_percent(class_iou[~self.unseen_mask])
        unseen = nanmean_percent(class_iou[self.unseen_mask])
        return {
            "mIoU_seen": seen,
            "mIoU_unseen": unseen,
            "hIoU": harmonic_mean(seen, unseen),
            **scores,
            "per_class_IoU": per_class(self.class_names, class_iou),
            "split": self.split,
            "unseen_classes": [n for n, u in zip(self.class_names, self.unseen_mask) if u],
        }
