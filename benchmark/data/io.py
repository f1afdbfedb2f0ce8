"""Reading one image / one label map (errors name the file) and split files."""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from PIL import Image

from benchmark.fileio import read_lines

from .errors import DatasetFileError, MissingFileError
from .label_modes import label_values


Source = Union[str, Path, bytes]


def _open(source: Source, name: str, image_id: Optional[str]) -> Image.Image:
    try:
        handle = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        handle.load()  # decode now, so a truncated file fails here and names itself
        return handle
    except FileNotFoundError as err:
        raise MissingFileError(f"file not found: {name}", name, image_id) from err
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for corrupt data
        raise DatasetFileError(f"cannot read {name}: {type(err).__name__}: {err}", name, image_id) from err


def read_image(source: Source, name: str, image_id: Optional[str] = None) -> np.ndarray:
    """RGB uint8 array (H, W, 3). ``name`` is the file's path (or a description) for errors."""
    handle = _open(source, name, image_id)
    if handle.mode.startswith("I;16"):
        # 16-bit grey: PIL's convert("RGB") clips every value above 255 (a white image);
        # keep the high byte, as an 8-bit export of the same picture would
        grey = (np.asarray(handle, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if handle.mode != "RGB":
        handle = handle.convert("RGB")  # COCO has grayscale and CMYK JPEGs
    return np.array(handle)  # a writable copy: torch.from_numpy refuses read-only views


def read_label(source: Source, name: str, image_id: Optional[str] = None) -> np.ndarray:
    """Integer array (H, W) of the raw values stored in a single-channel label image (1- to
    16-bit grey, palette indices, grey+alpha with opaque alpha; see ``label_modes``)."""
    return label_values(_open(source, name, image_id), source, name, image_id)


def read_split_ids(path: Path) -> List[str]:
    """The sorted, distinct image ids of a split file (one id per line, blank lines ignored)."""
    return sorted(set(read_lines(path, "split file")))
