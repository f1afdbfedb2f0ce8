"""Coloured masks, overlays and example figures (the same class has the same colour in
every panel and every figure of a dataset).

* Class ids are coloured with the dataset's palette (:func:`dataset_palette`): the Pascal
  VOC devkit colour map for VOC, the official Cityscapes label colours (cityscapesscripts'
  label table) for Cityscapes, otherwise matplotlib's qualitative ``tab20``/``tab20b``/
  ``tab20c`` colours (60 distinct), continued by evenly spaced ``turbo`` colours.
* Unsupervised segment ids are coloured by the class the metric matched them to
  (:func:`matched_classes`: the per-image match of ``hungarian_image`` or the dataset-level
  assignment of ``hungarian_dataset``), unmatched segments in neutral greys, so that a
  prediction and its ground truth agree in colour.
* :func:`example_figure` draws image | ground truth | prediction(s) as translucent overlays
  with a legend of the classes present and one title (parameters, per-image score) per panel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: colour of ignored pixels (the VOC devkit's colour of 255)
IGNORE_COLOUR = (224, 224, 192)
#: default opacity of a mask drawn over its image
OVERLAY_ALPHA = 0.55
#: grey levels (0-255) cycled over unmatched segments
UNMATCHED_GREYS = (96, 128, 160, 192, 64)
PIPELINE_MARK = "PIPELINE CHECK: random-weight model, not a result"


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
    """(H, W) integer ids -> (H, W, 3) uint8 colours of the VOC colour map (ids mod 256)."""
    return palette(256)[np.asarray(label, dtype=np.int64) % 256]


def distinct_palette(n: int) -> np.ndarray:
    """(n, 3) uint8: matplotlib's tab20, tab20b, tab20c (60 colours), then ``turbo`` samples."""
    import matplotlib

    colours: List[Tuple[float, ...]] = []
    for name in ("tab20", "tab20b", "tab20c"):
        colours.extend(matplotlib.colormaps[name].colors)
    if n > len(colours):
        extra = n - len(colours)
        turbo = matplotlib.colormaps["turbo"]
        colours.extend(turbo((np.arange(extra) + 0.5) / extra))
    return (np.asarray([c[:3] for c in colours[:n]]) * 255).round().astype(np.uint8)


def cityscapes_palette(class_names: Sequence[str]) -> np.ndarray:
    """(C, 3) uint8: the official colour of each Cityscapes class (by name) from
    cityscapesscripts' ``helpers/labels.py`` table."""
    from cityscapesscripts.helpers.labels import name2label

    missing = [n for n in class_names if n not in name2label]
    if missing:
        raise ValueError(f"Cityscapes classes {missing} are not in cityscapesscripts' label table")
    return np.asarray([name2label[n].color for n in class_names], dtype=np.uint8)


def dataset_palette(dataset: str, class_names: Sequence[str]) -> np.ndarray:
    """(C, 3) uint8 colours of a dataset's classes (index = train id).

    ``voc21``: VOC colour map index i; ``voc20`` (no background): index i + 1, so a class
    has its VOC colour in both; ``cityscapes*``: the official label colours (falls back to
    the distinct palette when cityscapesscripts is not installed); others: distinct colours.
    """
    c = len(class_names)
    name = dataset.lower()
    if name.startswith("voc"):
        offset = 1 if (c == 20 or name == "voc20") and (not class_names or class_names[0] != "background") else 0
        return palette(256)[offset : offset + c]
    if name.startswith("cityscapes"):
        try:
            return cityscapes_palette(class_names)
        except ImportError:
            pass
    return distinct_palette(c)


def colour_classes(label: np.ndarray, pal: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; ignored (or out-of-range) pixels get IGNORE_COLOUR."""
    label = np.asarray(label, dtype=np.int64)
    out = np.empty(label.shape + (3,), dtype=np.uint8)
    out[...] = IGNORE_COLOUR
    valid = (label >= 0) & (label < len(pal)) & (label != ignore_index)
    out[valid] = pal[label[valid]]
    return out


def matched_classes(
    pred: np.ndarray,
    label: np.ndarray,
    metric: str,
    num_classes: int,
    ignore_index: int = 255,
    assignment: Optional[Sequence[Optional[int]]] = None,
) -> Dict[int, int]:
    """Segment id -> matched class id, as the metric matched them (unmatched ids absent).

    ``hungarian_image``: this image's match (:meth:`HungarianImage.match_segments`, the very
    assignment its counts use; a class absent from the image that the solver pairs with a
    segment is left out: it is not a class of the image). ``hungarian_dataset``:
    ``assignment`` = the dataset-level cluster -> class list of ``metrics.json``.
    Other metrics score class ids directly: every id maps to itself.
    """
    pred = np.asarray(pred, dtype=np.int64)
    if metric == "hungarian_image":
        from benchmark.metrics.hungarian import HungarianImage

        label = np.asarray(label, dtype=np.int64)
        classes, segments = HungarianImage.match_segments(pred.ravel(), label.ravel(), num_classes, ignore_index)[:2]
        present = set(np.unique(label[(label != ignore_index) & (label < num_classes)]).tolist())
        return {int(s): int(c) for c, s in zip(classes, segments) if int(c) in present}
    if metric == "hungarian_dataset":
        if assignment is None:
            raise ValueError("hungarian_dataset colouring needs the dataset-level assignment (metrics.json results)")
        return {k: int(c) for k, c in enumerate(assignment) if c is not None}
    return {int(i): int(i) for i in np.unique(pred) if 0 <= i < num_classes}


def colour_segments(pred: np.ndarray, mapping: Mapping[int, int], pal: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8: a matched segment takes its class's colour,
    an unmatched one a neutral grey (cycled by segment id)."""
    pred = np.asarray(pred, dtype=np.int64)
    ids, inverse = np.unique(pred, return_inverse=True)
    colours = np.empty((len(ids), 3), dtype=np.uint8)
    for k, seg in enumerate(ids.tolist()):
        cls = mapping.get(int(seg))
        if cls is not None and 0 <= cls < len(pal):
            colours[k] = pal[cls]
        else:
            colours[k] = UNMATCHED_GREYS[int(seg) % len(UNMATCHED_GREYS)]
    return colours[inverse.reshape(pred.shape)]


def fit_image(image: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 image resized (bilinear, PIL) to ``shape`` = (H, W) if it differs."""
    image = np.asarray(image, dtype=np.uint8)
    if image.shape[:2] == tuple(shape):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((int(shape[1]), int(shape[0])), Image.BILINEAR))


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8 image blended with a colour mask: (1 − alpha)·image + alpha·mask.

    The image is resized (bilinear) to the mask's size when they differ."""
    image = fit_image(image, colours.shape[:2])
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return blended.round().clip(0, 255).astype(np.uint8)


def legend_entries(
    class_ids: Sequence[int], class_names: Sequence[str], pal: np.ndarray, unmatched: bool = False, ignore: bool = False
) -> List[Tuple[str, Tuple[float, float, float]]]:
    """(name, rgb in [0, 1]) for the classes present, plus 'unmatched segment' / 'ignore'."""
    out = [(class_names[c], tuple(pal[c] / 255.0)) for c in sorted(set(int(c) for c in class_ids)) if 0 <= c < len(pal)]
    if unmatched:
        out.append(("unmatched segment", tuple(np.array(UNMATCHED_GREYS[1:2] * 3) / 255.0)))
    if ignore:
        out.append(("ignore", tuple(np.array(IGNORE_COLOUR) / 255.0)))
    return out


class Panel:
    """One prediction panel: its label map, matching and title."""

    def __init__(self, pred: np.ndarray, mapping: Mapping[int, int], title: str):
        self.pred = np.asarray(pred, dtype=np.int64)
        self.mapping = dict(mapping)
        self.title = title


def example_figure(
    image: np.ndarray,
    label: np.ndarray,
    panels: Sequence[Panel],
    class_names: Sequence[str],
    pal: np.ndarray,
    path: Path,
    ignore_index: int = 255,
    title: str = "",
    pipeline_check: bool = False,
    alpha: float = OVERLAY_ALPHA,
    dpi: int = 90,
) -> Path:
    """Write image | ground truth | one panel per prediction, as overlays, with a legend.

    image: (H, W, 3) uint8; label: (H, W) class ids (``ignore_index`` ignored); every
    panel's ``mapping`` says which class each of its ids is coloured as (see
    :func:`matched_classes`). ``pipeline_check`` stamps the figure PIPELINE CHECK.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    label = np.asarray(label, dtype=np.int64)
    n = 2 + len(panels)
    height, width = label.shape
    panel_w = 2.6
    panel_h = panel_w * height / max(width, 1)
    fig, axes = plt.subplots(1, n, figsize=(panel_w * n + 1.8, panel_h + 0.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(fit_image(image, label.shape))
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(overlay(image, colour_classes(label, pal, ignore_index), alpha))
    axes[1].set_title("ground truth", fontsize=8)
    present = set(np.unique(label[(label != ignore_index) & (label >= 0) & (label < len(pal))]).tolist())
    unmatched = False
    for ax, panel in zip(axes[2:], panels):
        ax.imshow(overlay(image, colour_segments(panel.pred, panel.mapping, pal), alpha))
        ax.set_title(panel.title, fontsize=7)
        ids = np.unique(panel.pred).tolist()
        present |= {panel.mapping[i] for i in ids if i in panel.mapping}
        unmatched |= any(i not in panel.mapping for i in ids)
    for ax in axes:
        ax.axis("off")
    entries = legend_entries(sorted(present), class_names, pal, unmatched, ignore=bool((label == ignore_index).any()))
    handles = [Patch(facecolor=rgb, edgecolor="0.3", label=name) for name, rgb in entries]
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    heading = title + (f"  [{PIPELINE_MARK}]" if pipeline_check else "")
    if heading:
        fig.suptitle(heading, fontsize=8, color="darkred" if pipeline_check else "black")
    fig.tight_layout(rect=(0, 0, (panel_w * n) / (panel_w * n + 1.8), 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
