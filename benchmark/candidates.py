"""Which classes an open-vocabulary method considers for one image.

``method.candidates``:
  all   every class of the dataset (zero-shot, the hardest setting);
  gt    the classes present in the image's ground truth (weakly supervised setting: an
        oracle of image-level labels, say so when reporting);
  file  precomputed per-image candidates (and optional captions) from a JSON file
        (``method.candidates_file``), e.g. the official DiffSegmenter filter output:
        {"<image_id>": {"classes": ["cat", "sofa"], "caption": "..."}} or
        {"<image_id>": ["cat", "sofa"]}; class names or indices; keys may also be image
        paths (".../JPEGImages/2007_000033.jpg"), matched by their file stem.
The background class (when the dataset has one at index 0) is never a candidate: methods
score it with their background rule.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from benchmark.registry import did_you_mean

CANDIDATE_MODES = ("all", "gt", "file", "clip")


def background_index(class_names: Sequence[str]) -> Optional[int]:
    return 0 if class_names and class_names[0].strip().lower() == "background" else None


@lru_cache(maxsize=8)
def _load_file(path: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"method.candidates_file: {p} does not exist (expected a JSON object image_id -> classes)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"method.candidates_file: {p} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"method.candidates_file: {p} must hold a JSON object image_id -> classes")
    # the official DiffSegmenter filter output is keyed by image paths: index their stems
    by_stem = {Path(k).stem: k for k in data if Path(k).stem != k}
    return data, by_stem


def _to_indices(entries: Sequence[Any], class_names: Sequence[str], where: str) -> List[int]:
    index = {n: i for i, n in enumerate(class_names)}
    out = []
    for e in entries:
        if isinstance(e, int) and not isinstance(e, bool):
            if not 0 <= e < len(class_names):
                raise ValueError(f"{where}: class index {e} outside [0, {len(class_names)})")
            out.append(e)
        elif isinstance(e, str) and e in index:
            out.append(index[e])
        else:
            raise ValueError(f"{where}: unknown class {e!r}." + did_you_mean(str(e), class_names))
    return sorted(set(out))


def resolve_candidates(
    mode: str,
    image_id: str,
    label: torch.Tensor,
    class_names: Sequence[str],
    ignore_index: int,
    candidates_file: Optional[str] = None,
) -> Tuple[List[int], Optional[str]]:
    """(candidate class indices without background, caption or None) for one image."""
    bg = background_index(class_names)
    caption = None
    if mode == "all":
        cands = list(range(len(class_names)))
    elif mode == "gt":
        present = torch.unique(label[label != ignore_index])
        cands = [int(c) for c in present.tolist()]
    elif mode == "file":
        if not candidates_file:
            raise ValueError("method.candidates=file needs method.candidates_file=PATH")
        data, by_stem = _load_file(str(candidates_file))
        key = image_id if image_id in data else by_stem.get(image_id)
        if key is None:
            raise KeyError(
                f"method.candidates_file {candidates_file} has no entry for image {image_id!r} "
                "(keys may be image ids or image paths whose file stem is the id)"
            )
        entry = data[key]
        if isinstance(entry, dict):
            caption = entry.get("caption")
            entry = entry.get("classes", [])
        cands = _to_indices(entry, class_names, f"{candidates_file}[{image_id!r}]")
    else:
        raise ValueError(f"method.candidates={mode!r} is not handled here; valid: all, gt, file")
    return [c for c in cands if c != bg], caption
