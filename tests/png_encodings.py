"""A minimal PNG writer for tests: any bit depth and colour type the PNG spec allows,
written byte by byte (Pillow cannot write 2-/4-bit grey or 16-bit grey+alpha).

Rows alternate filter type 0 (None) and 1 (Sub) so that a reader's unfiltering with the
right bytes-per-pixel is exercised (PNG spec, section 9.2).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _row_bytes(samples: np.ndarray, depth: int) -> bytes:
    flat = [int(v) for v in samples.reshape(-1)]
    if depth == 16:
        return np.asarray(flat, dtype=">u2").tobytes()
    if depth == 8:
        return np.asarray(flat, dtype=np.uint8).tobytes()
    per_byte = 8 // depth
    out = bytearray((len(flat) + per_byte - 1) // per_byte)
    for i, v in enumerate(flat):
        assert 0 <= v < 2**depth, (v, depth)
        out[i // per_byte] |= v << (8 - depth * (i % per_byte + 1))
    return bytes(out)


def png_bytes(samples, depth: int, colour_type: int, palette: Optional[np.ndarray] = None) -> bytes:
    """PNG of ``samples`` (H, W) or (H, W, channels) stored at ``depth`` bits per sample."""
    s = np.asarray(samples)
    if s.ndim == 2:
        s = s[:, :, None]
    height, width, channels = s.shape
    bpp = max(1, channels * depth // 8)  # bytes per complete pixel, for the Sub filter
    rows = []
    for r in range(height):
        raw = _row_bytes(s[r], depth)
        if r % 2:
            sub = bytes((raw[i] - (raw[i - bpp] if i >= bpp else 0)) % 256 for i in range(len(raw)))
            rows.append(b"\x01" + sub)
        else:
            rows.append(b"\x00" + raw)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", np.asarray(palette, dtype=np.uint8).tobytes())
    return out + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b"")


def write_png(path: Path, samples, depth: int, colour_type: int, palette: Optional[np.ndarray] = None) -> Path:
    Path(path).write_bytes(png_bytes(samples, depth, colour_type, palette))
    return Path(path)
