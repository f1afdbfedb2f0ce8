"""Images and labels generated on the fly, so every method and metric runs without data.

Each image is a Voronoi partition into ``n_regions`` piecewise-constant regions; each region
shows one of 3..5 classes drawn for that image, in the class's colour plus Gaussian noise.
Everything is a function of (seed, image index): the same config gives the same pixels in
any process and any order. Numbers computed on it are pipeline checks, not results.
"""
from __future__ import annotations

from typing import List

import numpy as np

from .config import SyntheticConfig
from .dataset import SegmentationDataset, select_ids
from .decode import IGNORE_INDEX
from .preprocess import Preprocess

_NAMES = ["sky", "tree", "road", "building", "water", "grass", "person", "car", "sand", "snow", "rock", "wall"]


def synthetic_class_names(num_classes: int) -> List[str]:
    if num_classes <= len(_NAMES):
        return _NAMES[:num_classes]
    return _NAMES + [f"class{i}" for i in range(len(_NAMES), num_classes)]


class SyntheticDataset(SegmentationDataset):
    def __init__(self, cfg: SyntheticConfig):
        _check(cfg)
        all_ids = [f"synthetic_{i:06d}" for i in range(cfg.n_images)]
        where = f"synthetic (n_images={cfg.n_images})"
        names = list(cfg.class_names) if cfg.class_names is not None else synthetic_class_names(cfg.num_classes)
        super().__init__(
            name=cfg.name,
            class_names=names,
            ids=select_ids(all_ids, cfg.ids, cfg.limit, where),
            preprocess=Preprocess(cfg.preprocess, cfg.resolution, cfg.antialias),
            on_error=cfg.on_error,
            split=cfg.split,
            expected_count=cfg.n_images,
            found_count=len(all_ids),
        )
        self.config = cfg
        # one colour per class for the whole dataset, spread over the RGB cube
        self.palette = np.random.default_rng([cfg.seed, 2**31]).integers(30, 226, size=(cfg.num_classes, 3))

    def load(self, index: int):
        cfg = self.config
        image_number = int(self.ids[index].rsplit("_", 1)[1])
        rng = np.random.default_rng([cfg.seed, image_number])
        most = min(cfg.max_classes, cfg.num_classes)
        n_classes = int(rng.integers(min(cfg.min_classes, most), most + 1))
        classes = rng.choice(cfg.num_classes, size=n_classes, replace=False)
        n_regions = max(cfg.n_regions, n_classes)
        # every drawn class owns at least one region; the others repeat drawn classes
        region_class = np.concatenate([classes, rng.choice(classes, size=n_regions - n_classes)])
        centres = rng.uniform((0, 0), (cfg.height, cfg.width), size=(n_regions, 2))
        rows, cols = np.mgrid[0:cfg.height, 0:cfg.width]
        distance = (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
        label = region_class[distance.argmin(axis=-1)].astype(np.int64)
        noise = rng.normal(0.0, cfg.noise_std, size=(cfg.height, cfg.width, 3))
        image = np.clip(self.palette[label] + noise, 0, 255).round().astype(np.uint8)
        if cfg.ignore_boundary > 0:
            label[_boundary_band(label, cfg.ignore_boundary)] = IGNORE_INDEX
        return image, label, {"image_path": None, "label_path": None, "seed": cfg.seed}


def _boundary_band(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (chessboard distance) of a change of class."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[:-1] |= label[:-1] != label[1:]
    edge[1:] |= label[:-1] != label[1:]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:, 1:] |= label[:, :-1] != label[:, 1:]
    band = edge.copy()
    for _ in range(width - 1):  # grow by one pixel per step (whole-array operations)
        grown = band.copy()
        grown[1:] |= band[:-1]
        grown[:-1] |= band[1:]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    return band


def _check(cfg: SyntheticConfig) -> None:
    problems = []
    if cfg.n_images < 0:
        problems.append(f"n_images={cfg.n_images} (must be >= 0)")
    if cfg.height < 1 or cfg.width < 1:
        problems.append(f"height x width = {cfg.height} x {cfg.width} (must be >= 1)")
    if not 1 <= cfg.num_classes < IGNORE_INDEX:
        problems.append(f"num_classes={cfg.num_classes} (must be 1..254)")
    if not 1 <= cfg.min_classes <= cfg.max_classes:
        problems.append(f"min_classes={cfg.min_classes}, max_classes={cfg.max_classes} (need 1 <= min <= max)")
    if cfg.ignore_boundary < 0 or cfg.noise_std < 0:
        problems.append("ignore_boundary and noise_std must be >= 0")
    if cfg.class_names is not None and len(cfg.class_names) != cfg.num_classes:
        problems.append(f"{len(cfg.class_names)} class_names for num_classes={cfg.num_classes}")
    if problems:
        raise ValueError("invalid synthetic dataset config: " + "; ".join(problems))
