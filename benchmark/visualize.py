"""Consistent colours for label maps (the same id has the same colour in every figure)."""
from __future__ import annotations

import numpy as np


def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC bit-interleaving palette: (n, 3) uint8; id 255 (ignore) is white."""
    ids = np.arange(n)
    pal = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            pal[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    pal[255 % n] = 255
    return pal.astype(np.uint8)


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) integer ids -> (H, W, 3) uint8 colours."""
    return palette(256)[np.asarray(label, dtype=np.int64) % 256]
