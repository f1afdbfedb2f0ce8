"""Consistent colours for label maps (the same id has the same colour in every figure)."""
from __future__ import annotations

import numpy as np


def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC devkit colour map (``labelcolormap``): (n, 3) uint8.

    Index i gets the colour bits of i interleaved over R, G, B; 255 (ignore) is (224, 224, 192).
    """
    ids = np.arange(n)
    pal = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            pal[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return pal.astype(np.uint8)


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) integer ids -> (H, W, 3) uint8 colours."""
    return palette(256)[np.asarray(label, dtype=np.int64) % 256]
