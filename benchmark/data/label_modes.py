"""The raw label values of a decoded label image, whatever single-channel encoding it uses.

Label maps reach users in every single-channel form an image library can write: 1-bit
(values 0/1), 2-, 4-, 8- and 16-bit grey, palette (VOC: the palette indices are the
labels, never the colours), 32-bit integer (TIFF), and grey+alpha with an opaque alpha
(what some editors save). Pillow opens all of them, but not all as the stored numbers:

* 1-bit grey opens as mode ``"1"``, whose array is boolean;
* 2- and 4-bit grey PNGs are scaled to 0..255 (value v becomes v * 85 or v * 17);
* 16-bit grey+alpha PNGs open as ``"RGBA"`` holding only the high byte of each sample.

:func:`label_values` undoes each of these, so the array holds the values stored in the
file, and refuses every other encoding (RGB colours, float, transparent alpha) with a
message naming the file's actual mode. The PNG cases follow the PNG specification's IHDR
fields (bit depth, colour type; ISO/IEC 15948 section 11.2.2).
"""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageFile

from .errors import InvalidLabelError

Source = Union[str, Path, bytes]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour types (PNG spec, table 11.1)
PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
#: PIL modes whose values are the labels as they are (``"1"`` is cast to uint8)
PLAIN_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
#: PIL modes of one value channel plus alpha: accepted when every alpha is opaque
ALPHA_MODES = ("LA", "La", "PA")
ACCEPTED = (
    "one channel of class indices: 1-, 2-, 4-, 8- or 16-bit grey, palette (the indices are "
    "read, not the colours), 32-bit integer, or grey+alpha with every pixel opaque"
)


def png_header(source: Source) -> Optional[Tuple[int, int]]:
    """(bit depth, colour type) from a PNG's IHDR chunk; None when ``source`` is no PNG."""
    if isinstance(source, bytes):
        head = source[:26]
    else:
        with open(source, "rb") as fh:
            head = fh.read(26)
    # signature (8) + chunk length (4) + b"IHDR" (4) + width (4) + height (4) + depth + colour type
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    depth, colour = struct.unpack(">BB", head[24:26])
    return int(depth), int(colour)


def describe(mode: str, header: Optional[Tuple[int, int]]) -> str:
    """``PIL mode 'RGB' (PNG colour type 2: RGB, 8 bits per sample)``, for messages."""
    text = f"PIL mode {mode!r}"
    if header is not None:
        depth, colour = header
        text += f" (PNG colour type {colour}: {PNG_COLOUR_TYPES.get(colour, 'unknown')}, {depth} bits per sample)"
    return text


def _reopen(source: Source) -> ImageFile.ImageFile:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def _grey_alpha_16(source: Source) -> Tuple[np.ndarray, np.ndarray]:
    """(grey, alpha) uint16 arrays of a 16-bit grey+alpha PNG, exactly as stored.

    Pillow decodes such a file with raw mode "LA;16B", which keeps the high byte of each
    sample. Its scanlines have 4 bytes per pixel, as 8-bit RGBA's do, so decoding the same
    data with raw mode "RGBA" gives every byte unchanged (PNG unfiltering and Adam7
    de-interlacing depend only on the bytes per pixel): R, G = grey high, low; B, A =
    alpha high, low.
    """
    handle = _reopen(source)
    tile = handle.tile[0]
    handle.tile = [ImageFile._Tile(tile[0], tile[1], tile[2], "RGBA")] if hasattr(ImageFile, "_Tile") else [
        (tile[0], tile[1], tile[2], "RGBA")
    ]
    handle.load()
    raw = np.asarray(handle, dtype=np.uint16)
    return raw[..., 0] << 8 | raw[..., 1], raw[..., 2] << 8 | raw[..., 3]


def _require_opaque(alpha: np.ndarray, opaque: int, name: str, image_id: Optional[str], what: str) -> None:
    transparent = int((alpha != opaque).sum())
    if transparent:
        raise InvalidLabelError(
            f"label file {name} is {what} with {transparent} of {alpha.size} pixels not fully opaque; a grey+alpha "
            f"label map is read only when its alpha is {opaque} everywhere (expected {ACCEPTED})",
            name, image_id,
        )


def label_values(handle: Image.Image, source: Source, name: str, image_id: Optional[str] = None) -> np.ndarray:
    """Integer (H, W) array of the label values stored in the decoded image ``handle``.

    ``source`` is what ``handle`` was opened from (path or bytes; its PNG header decides
    the bit-depth corrections), ``name`` the file name for errors. Raises
    InvalidLabelError naming the file and its actual mode for any other encoding.
    """
    header = png_header(source)
    mode = handle.mode
    if header == (16, 4):  # 16-bit grey+alpha: Pillow's own decoding drops the low bytes
        grey, alpha = _grey_alpha_16(source)
        _require_opaque(alpha, 0xFFFF, name, image_id, describe(mode, header))
        return grey
    if mode in ALPHA_MODES:
        arr = np.array(handle)
        _require_opaque(arr[..., 1], 255, name, image_id, describe(mode, header))
        return arr[..., 0].copy()
    if mode not in PLAIN_MODES:
        hint = " (label maps converted to RGB colours cannot be decoded)" if mode.startswith("RGB") else ""
        raise InvalidLabelError(
            f"label file {name} has {describe(mode, header)}; expected {ACCEPTED}{hint}", name, image_id
        )
    arr = np.array(handle)  # a writable copy: torch.from_numpy refuses read-only views
    if mode == "1":
        return arr.astype(np.uint8)
    if header is not None and header[1] == 0 and header[0] in (2, 4):
        # Pillow's "L;2" / "L;4" unpackers scale v to v * 255 / (2**depth - 1): exact to undo
        return arr // (255 // (2 ** header[0] - 1))
    return arr
