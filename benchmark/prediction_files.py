"""Reading label maps saved by other programs (``method=predictions``)."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from benchmark.data.errors import DatasetFileError
from benchmark.data.io import read_label


def load_prediction(directory: str, image_id: str, expected_hw: Tuple[int, int], suffix: str = ".png") -> torch.Tensor:
    """``directory/<image_id><suffix>`` as an int64 (H, W) tensor; errors name id, file and sizes."""
    path = Path(directory) / f"{image_id}{suffix}"
    if not path.is_file():
        raise FileNotFoundError(
            f"method=predictions: no prediction for image {image_id!r}: expected file {path} "
            f"(a single-channel label PNG of size {expected_hw[1]}x{expected_hw[0]})"
        )
    try:
        arr = read_label(path, str(path), image_id)  # every single-channel encoding, as label values
    except DatasetFileError as err:
        raise ValueError(f"method=predictions: prediction for image {image_id!r}: {err}") from err
    if arr.shape != tuple(expected_hw):
        raise ValueError(
            f"method=predictions: {path} (image {image_id!r}) is {arr.shape[0]}x{arr.shape[1]} (HxW) but the "
            f"evaluated label is {expected_hw[0]}x{expected_hw[1]}; save predictions at the evaluated label size"
        )
    return torch.from_numpy(arr.astype(np.int64))
