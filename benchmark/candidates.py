"""Which classes an open-vocabulary method considers for one image.

``method.candidates``:
  all   every class of the dataset (zero-shot, the hardest setting);
  gt    the classes present in the image's ground truth (weakly supervised setting: an
        oracle of image-level labels, say so when reporting);
  file  precomputed per-image candidates (and optional captions) from a JSON file
        (``method.candidates_file``), e.g. the official DiffSegmenter filter output:
        {"<image_id>": {"classes": ["cat", "sofa"], "caption": "..."}} or
        {"<image_id>": ["cat", "sofa"]}; class names or indices; keys may also be image
        paths (".../JPEGImages/2007_000033.jpg") or file names ("2007_000033.jpg"), matched
        by their file stem, and COCO 2014 names ("COCO_val2014_000000182611.jpg"), matched
        by their 12-digit image id. Names may be a class's prompt names (method.synonyms,
        e.g. "plane" for aeroplane).
        The official DiffSegmenter filter files
        (``dataset/{voc12,voc10,coco}/predict_syn_txt_0.8_img_0.97.json``) are read as
        published: {"image_similarity": {key: [names]}, "text_similarity": {...},
        "synonym_matching": {...}}; an image's candidates are the union of its
        ``image_similarity`` and ``text_similarity`` lists, as the official
        ``read_json(json_path, choice=['image_similarity', 'text_similarity'])``
        (open_vocabulary/voc12/ptp_stable_best.py, voc10/ptp_stable_voc10.py,
        coco/ptp_stable_coco.py); ``synonym_matching`` is unused there too.
The background class (when the dataset has one at index 0) is never a candidate: methods
score it with their background rule.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from benchmark.registry import did_you_mean

CANDIDATE_MODES = ("all", "gt", "file", "clip")


def background_index(class_names: Sequence[str]) -> Optional[int]:
    return 0 if class_names and class_names[0].strip().lower() == "background" else None


#: the criteria of the official DiffSegmenter filter files; the official code reads the union
#: of the first two (``read_json(..., choice=['image_similarity', 'text_similarity'])``)
OFFICIAL_FILTER_KEYS = ("image_similarity", "text_similarity", "synonym_matching")
OFFICIAL_FILTER_UNION = ("image_similarity", "text_similarity")
_COCO2014 = re.compile(r"^COCO_(?:train|val)2014_(\d{12})$")


def is_official_filter_file(data: Any) -> bool:
    """Whether ``data`` has the layout of the official DiffSegmenter filter files."""
    return (
        isinstance(data, dict) and bool(data) and set(data) <= set(OFFICIAL_FILTER_KEYS)
        and all(k in data for k in OFFICIAL_FILTER_UNION)
        and all(isinstance(v, dict) for v in data.values())
    )


def official_filter_union(data: Mapping[str, Mapping[str, Sequence[str]]], where: str) -> Dict[str, List[str]]:
    """{image key: union of its image_similarity and text_similarity names} (first-seen order)."""
    first, second = (data[k] for k in OFFICIAL_FILTER_UNION)
    out = {}
    for key, names in first.items():
        if key not in second:
            raise ValueError(f"{where}: image {key!r} is in 'image_similarity' but not in 'text_similarity'")
        for part in (names, second[key]):
            if not isinstance(part, list) or not all(isinstance(n, str) for n in part):
                raise ValueError(f"{where}[{key!r}]: expected lists of class names, got {part!r}")
        out[key] = list(dict.fromkeys(list(names) + list(second[key])))
    return out


def key_aliases(key: str) -> List[str]:
    """The image ids a candidates-file key stands for: its file stem (paths, "<id>.jpg") and
    the 12-digit id of COCO 2014 names ("COCO_val2014_000000182611.jpg" -> "000000182611",
    the same image in val2017)."""
    stem = Path(key).stem
    out = [stem] if stem != key else []
    match = _COCO2014.match(stem)
    if match:
        out.append(match.group(1))
    return out


#: what a candidates file holds (messages); captions are read by methods prompting with them
FILE_FORMAT = 'a JSON object image_id -> [class names] or -> {"caption": "...", "classes": [...]}'


@lru_cache(maxsize=8)
def _load_file(path: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"method.candidates_file: {p} does not exist (expected {FILE_FORMAT})")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"method.candidates_file: {p} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"method.candidates_file: {p} must hold {FILE_FORMAT}")
    if is_official_filter_file(data):
        data = official_filter_union(data, f"method.candidates_file {p}")
    # keys may be image paths, file names or COCO 2014 names: index their ids
    by_stem: Dict[str, str] = {}
    for k in data:
        for alias in key_aliases(k):
            if alias in data and alias != k:
                continue  # an exact key wins
            if by_stem.get(alias, k) != k:
                raise ValueError(
                    f"method.candidates_file {p}: keys {by_stem[alias]!r} and {k!r} both stand for image {alias!r}"
                )
            by_stem[alias] = k
    return data, by_stem


def name_index(class_names: Sequence[str], synonyms: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, int]:
    """{name: class index} over the class names and their prompt names (``method.synonyms``,
    e.g. the official DiffSegmenter prompt lists: "plane" -> aeroplane, "toothbrus" ->
    toothbrush). A prompt name shared by two classes is an error."""
    index = {n: i for i, n in enumerate(class_names)}
    by_prompt: Dict[str, int] = {}
    for cls, names in (synonyms or {}).items():
        if cls not in index:
            raise ValueError(f"method.synonyms names class {cls!r}, which is not a class of this dataset."
                             + did_you_mean(cls, class_names))
        for n in names:
            n = n.strip()
            if by_prompt.get(n, index[cls]) != index[cls]:
                raise ValueError(
                    f"method.synonyms: name {n!r} is a prompt name of both {class_names[by_prompt[n]]!r} and {cls!r}"
                )
            by_prompt[n] = index[cls]
    for n, i in by_prompt.items():
        index.setdefault(n, i)  # a class's own name wins over another class's prompt name
    return index


def _to_indices(entries: Sequence[Any], class_names: Sequence[str], where: str,
                synonyms: Optional[Mapping[str, Sequence[str]]] = None) -> List[int]:
    index = name_index(class_names, synonyms)
    out = []
    for e in entries:
        if isinstance(e, int) and not isinstance(e, bool):
            if not 0 <= e < len(class_names):
                raise ValueError(f"{where}: class index {e} outside [0, {len(class_names)})")
            out.append(e)
        elif isinstance(e, str) and e in index:
            out.append(index[e])
        else:
            raise ValueError(
                f"{where}: unknown class {e!r} (expected a class name, a prompt name from method.synonyms, "
                "or a class index)." + did_you_mean(str(e), list(index))
            )
    return sorted(set(out))


def resolve_candidates(
    mode: str,
    image_id: str,
    label: torch.Tensor,
    class_names: Sequence[str],
    ignore_index: int,
    candidates_file: Optional[str] = None,
    synonyms: Optional[Mapping[str, Sequence[str]]] = None,
) -> Tuple[List[int], Optional[str]]:
    """(candidate class indices without background, caption or None) for one image.

    ``synonyms``: {class name: prompt names}; a file may name a class by one of them.
    Errors: KeyError when the file has no entry for the image; ValueError for an unknown name.
    """
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
                "(keys may be image ids, image paths or file names whose file stem is the id, or COCO 2014 names)"
            )
        entry = data[key]
        if isinstance(entry, dict):
            caption = entry.get("caption")
            entry = entry.get("classes", [])
        cands = _to_indices(entry, class_names, f"{candidates_file}[{key!r}]", synonyms)
    else:
        raise ValueError(f"method.candidates={mode!r} is not handled here; valid: all, gt, file")
    return [c for c in cands if c != bg], caption
