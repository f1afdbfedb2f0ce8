"""Raw label values -> train ids, by one numpy lookup per label map.

Each dataset's decoding is a ``LabelDecoder``: a lookup table indexed by the raw value
whose entries are the train id, 255 (ignored) or -1 (a value the dataset never holds:
the file is wrong, and decoding it fails naming the file and the values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional

import numpy as np

from .errors import InvalidLabelError, PathLike
from .reference import COCOSTUFF_FINE_COUNT, coco_thing_fine_ids, cocostuff_fine_to_coarse

#: train-id value of pixels that are not evaluated, for every dataset after decoding
IGNORE_INDEX = 255
_UNDEFINED = -1


@dataclass(frozen=True, eq=False)
class LabelDecoder:
    #: int64 table over raw values: train id, IGNORE_INDEX, or -1 (undefined raw value)
    lut: np.ndarray
    #: the raw values the dataset defines, for error messages
    description: str

    @property
    def num_raw_values(self) -> int:
        return int(self.lut.shape[0])

    def __call__(self, raw: np.ndarray, path: Optional[PathLike] = None) -> np.ndarray:
        """Decode a raw label map (any integer dtype) to an int64 train-id map."""
        where = f"label file {path}" if path is not None else "label map"
        if not np.issubdtype(raw.dtype, np.integer):
            raise InvalidLabelError(f"{where} holds {raw.dtype} values; expected integer class indices", path)
        if raw.dtype != np.uint8 or self.num_raw_values < 256:
            # only uint8 maps are in range of every table by construction
            low, high = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
            if low < 0 or high >= self.num_raw_values:
                bad = raw[(raw < 0) | (raw >= self.num_raw_values)]
                self._fail(where, path, np.unique(bad))
        decoded = self.lut[raw]
        undefined = decoded < 0
        if undefined.any():
            self._fail(where, path, np.unique(raw[undefined]))
        return decoded

    def _fail(self, where: str, path: Optional[PathLike], values: np.ndarray) -> None:
        shown = ", ".join(str(int(v)) for v in values[:10]) + (" ..." if values.size > 10 else "")
        raise InvalidLabelError(
            f"{where} holds values [{shown}] that this dataset does not define "
            f"(expected {self.description}); is it the right file / dataset config?",
            path,
        )


def make_decoder(
    mapping: Mapping[int, int], ignored: Iterable[int], description: str, size: int = 256
) -> LabelDecoder:
    """Table over raw values 0..size-1: ``mapping`` raw -> train id, ``ignored`` -> 255,
    everything else undefined."""
    lut = np.full(size, _UNDEFINED, dtype=np.int64)
    for raw_value in ignored:
        lut[raw_value] = IGNORE_INDEX
    raw_values = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
    lut[raw_values] = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
    return LabelDecoder(lut, description)


def indices_decoder(num_classes: int, ignored: Iterable[int] = (IGNORE_INDEX,), reduce_zero_label: bool = False,
                    what: str = "class indices") -> LabelDecoder:
    """Raw values are class indices; with ``reduce_zero_label`` raw 0 is ignored and
    raw v (1..num_classes) is class v - 1 (mmseg's convention)."""
    ignored = set(int(v) for v in ignored)
    offset = 1 if reduce_zero_label else 0
    if reduce_zero_label:
        ignored.add(0)
    mapping = {raw: raw - offset for raw in range(offset, num_classes + offset) if raw not in ignored}
    size = max(256, max(ignored, default=0) + 1, num_classes + offset)
    shown_ignored = ", ".join(str(v) for v in sorted(ignored))
    description = (
        f"{what} {offset}..{num_classes + offset - 1}"
        + (f" (mapped to {0}..{num_classes - 1})" if offset else "")
        + f", ignored {shown_ignored}"
    )
    return make_decoder(mapping, ignored, description, size)


def _cocostuff27_decoder() -> LabelDecoder:
    coarse = cocostuff_fine_to_coarse()
    return make_decoder(
        dict(enumerate(coarse.tolist())), [IGNORE_INDEX],
        f"COCO-Stuff fine ids 0..{COCOSTUFF_FINE_COUNT - 1}, ignored 255",
    )


def _cityscapes_labels():
    from cityscapesscripts.helpers.labels import labels

    return [label for label in labels if label.id >= 0]


def _cityscapes27_decoder() -> LabelDecoder:
    # the 27-class protocol keeps every labelId from 7 ("road") to 33 ("bicycle"), even
    # those the official 19-class evaluation ignores; ids 0..6 are void. 255 is
    # "license plate" (labelId -1 written to an 8-bit PNG).
    ids = [label.id for label in _cityscapes_labels()]
    first = 7
    return make_decoder(
        {i: i - first for i in ids if i >= first},
        [i for i in ids if i < first] + [IGNORE_INDEX],
        "Cityscapes labelIds 0..33 (0..6 ignored), 255 ignored",
    )


def _cityscapes19_decoder() -> LabelDecoder:
    labels = _cityscapes_labels()
    return make_decoder(
        {label.id: label.trainId for label in labels if 0 <= label.trainId < IGNORE_INDEX},
        [label.id for label in labels if not 0 <= label.trainId < IGNORE_INDEX] + [IGNORE_INDEX],
        "Cityscapes labelIds 0..33 (trainIds from cityscapesscripts' label table), 255 ignored",
    )


# ------------------------------------------------------------ DiffCut's label mappings
# PaulCouairon/DiffCut dataloader/iterator.py get_fine_to_coarse and eval_diffcut.py: every
# raw value mapped to -1 there is "background" (train id C, the last class) for VOC20,
# Context and COCO-Object (eval_diffcut.py: ``label_map[label_map == -1] = N_CLASS - 1``).
def _voc20_diffcut_decoder() -> LabelDecoder:
    # DiffCut reads FC-CLIP's annotations_pascal20 (datasets/prepare_pascal_voc_sem_seg.py
    # convert_pas20: 0 -> 255, then v - 1, 254 -> 255, so background AND the 255 object
    # borders become 255), then 255 -> -1 -> background. Composed on the VOC2012 PNGs:
    # raw 0 and raw 255 -> 20 (background), raw v in 1..20 -> v - 1.
    mapping = {v: v - 1 for v in range(1, 21)}
    mapping.update({0: 20, IGNORE_INDEX: 20})
    return make_decoder(mapping, [], "VOC class indices 0..20 and 255 (0 and 255 mapped to background 20)")


def _context59_diffcut_decoder() -> LabelDecoder:
    # FC-CLIP's prepare_pascal_ctx_sem_seg.py writes the 59 classes as 0..58 and
    # background as 255 (the same sorted _mapping as mmseg's pascal_context.py converter,
    # shifted by one); DiffCut maps 255 -> -1 -> background. On mmseg's 0..59 PNGs:
    # raw 0 -> 59, raw v in 1..59 -> v - 1. 255 never occurs in them and stays ignored.
    mapping = {v: v - 1 for v in range(1, 60)}
    mapping[0] = 59
    return make_decoder(mapping, [IGNORE_INDEX], "Pascal Context class indices 0..59 (0 mapped to background 59)")


def _coco_object_diffcut_decoder() -> LabelDecoder:
    # dataloader/coco/coco_object_mapping.pickle maps the stuffthingmaps fine id of each
    # thing to its object index; get_fine_to_coarse("COCO-Object") sets every key >= 91
    # (stuff 91..181 and unlabelled 255) to -1 -> background. The object indices are 0..79
    # in category order: eval_diffcut_openvoc.py adds 1 to them and inserts 'background'
    # as class 0 of its 81 names. Unused thing ids (no COCO category) never occur.
    mapping = {fine: index for index, fine in enumerate(coco_thing_fine_ids())}
    background = len(mapping)
    mapping.update({fine: background for fine in range(91, COCOSTUFF_FINE_COUNT)})
    mapping[IGNORE_INDEX] = background
    return make_decoder(
        mapping, [], "COCO-Stuff fine ids (things -> 0..79, stuff 91..181 and 255 -> background 80)"
    )


def _ade20k_diffcut_decoder() -> LabelDecoder:
    # DiffCut reads ADEChallengeData2016/annotations (raw 0..150) with 255 -> -1 only, and
    # scores a 150-class histogram (tools/utils.py _fast_hist keeps 0 <= label < 150): raw 0
    # ("other") is class 0, raw 1..149 keep their value, raw 150 ("flag") is not scored.
    return make_decoder({v: v for v in range(150)}, [150, IGNORE_INDEX],
                        "ADE20K class indices 0..150 (0..149 kept as is, 150 ignored)")


#: decoding of each official dataset config
DECODERS: Dict[str, Callable[[], LabelDecoder]] = {
    "voc21": lambda: indices_decoder(21, what="VOC class indices"),
    "voc20": lambda: indices_decoder(20, reduce_zero_label=True, what="VOC class indices"),
    "context60": lambda: indices_decoder(60, what="Pascal Context class indices"),
    "context59": lambda: indices_decoder(59, reduce_zero_label=True, what="Pascal Context class indices"),
    "cocostuff27": _cocostuff27_decoder,
    "cocostuff171": lambda: indices_decoder(171, what="COCO-Stuff labelTrainIds"),
    # GroupViT's converter writes things as 1..80 and everything else (stuff, unlabeled)
    # as 0; 255 never occurs in its output but is accepted as ignored
    "coco_object": lambda: indices_decoder(81, what="COCO-Object instanceTrainIds"),
    "cityscapes27": _cityscapes27_decoder,
    "cityscapes19": _cityscapes19_decoder,
    # mmseg ADE20KDataset (reduce_zero_label=True) and LoadAnnotations._load_seg_map
    # (mmseg/datasets/transforms/loading.py): 0 -> 255, v -> v - 1, 254 -> 255
    "ade20k": lambda: indices_decoder(150, reduce_zero_label=True, what="ADE20K class indices"),
    "voc20_diffcut": _voc20_diffcut_decoder,
    "context59_diffcut": _context59_diffcut_decoder,
    "coco_object_diffcut": _coco_object_diffcut_decoder,
    "ade20k_diffcut": _ade20k_diffcut_decoder,
}


def decoder_for(name: str) -> LabelDecoder:
    if name not in DECODERS:
        raise KeyError(f"no label decoding for dataset {name!r}; known: {', '.join(sorted(DECODERS))}")
    return DECODERS[name]()


def label_to_train_ids(raw: np.ndarray, dataset: str) -> np.ndarray:
    """Decode a raw label map of an official dataset (as stored on disk) to train ids."""
    return decoder_for(dataset)(np.asarray(raw))
