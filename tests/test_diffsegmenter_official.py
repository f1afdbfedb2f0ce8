"""DiffSegmenter presets against the official code's rules (VCG-team/DiffSegmenter).

Official files: open_vocabulary/voc12/ptp_stable_best.py (VOC), voc10/ptp_stable_voc10.py
(Context), coco/ptp_stable_coco.py (COCO), evaluation_{voc12,voc10,coco}.py, and the
filter outputs dataset/{voc12,voc10,coco}/predict_syn_txt_0.8_img_0.97.json (read from
../shared/reference/diffsegmenter/, never copied into the project).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.candidates import resolve_candidates
from benchmark.data.reference import class_names

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "reference" / "diffsegmenter"

# The official prompt-name lists (``embs``): official class index = embs.index(name) + 1
# (evaluation_*.py: ``tensor[int(key)+1]`` with key = embs.index(name)), in the order of the
# official ``categories`` (background first), which is the dataset's class order here.
EMBS = {
    # open_vocabulary/voc12/ptp_stable_best.py ``embs``
    "voc12": ["plane", "bicycle", "bird", "boat", "bottle", "buses", "car", "cat", "chair", "cow", "table", "dog",
              "horse", "motorbike", "people", "plant", "sheep", "sofa", "train", "monitor"],
    # open_vocabulary/voc10/ptp_stable_voc10.py ``embs``
    "voc10": ["airplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
              "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
              "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
              "mountain", "mouse", "person", "plate", "platform", "plant", "road", "rock", "sheep", "shelves",
              "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "monitor", "wall",
              "water", "window", "wood"],
    # open_vocabulary/coco/ptp_stable_coco.py ``embs``
    "coco": ["person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "traffic light",
             "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
             "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
             "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
             "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
             "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa",
             "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard",
             "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
             "teddy bear", "hair drier", "toothbrus"],
}
PRESETS = {"voc12": ("diffsegmenter_voc21", "voc21"), "voc10": ("diffsegmenter_context60", "context60"),
           "coco": ("diffsegmenter_coco_object", "coco_object")}


def preset(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())


def official_image_id(folder: str, key: str) -> str:
    """The dataset id the official code evaluates for a filter-file key."""
    if folder == "coco":  # "COCO_val2014_000000182611.jpg": evaluation_coco.py reads gt '%s.png' % name[-12:]
        return Path(key).stem[-12:]
    return Path(key).stem  # ptp_stable_best.py: img_path[-15:-4]


def shared_file(folder: str) -> Path:
    path = SHARED / f"{folder}_predict_syn_txt_0.8_img_0.97.json"
    if not path.is_file():
        pytest.skip(f"official DiffSegmenter filter file {path} absent (expected in ../shared/reference/diffsegmenter/)")
    return path


@pytest.mark.parametrize("folder", ["voc12", "voc10", "coco"])
def test_official_filter_files_give_the_official_candidates_of_every_image(folder):
    path = shared_file(folder)
    data = json.loads(path.read_text())
    experiment, dataset = PRESETS[folder]
    names = class_names(dataset)
    synonyms = preset(experiment)["method"]["synonyms"]
    label = torch.zeros(1, 1, dtype=torch.long)
    n = 0
    for key, image_names in data["image_similarity"].items():
        # read_json(json_path, choice=['image_similarity', 'text_similarity']): the union
        union = set(image_names) | set(data["text_similarity"][key])
        want = sorted(EMBS[folder].index(name) + 1 for name in union)
        got, caption = resolve_candidates("file", official_image_id(folder, key), label, names, 255, str(path), synonyms)
        assert got == want, key
        assert caption is None
        n += 1
    assert n == {"voc12": 1449, "voc10": 5104, "coco": 5000}[folder]


def test_official_file_errors_name_file_image_and_name(tmp_path):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"image_similarity": {"a/2007_1.jpg": ["plane", "catt"]},
                                "text_similarity": {"a/2007_1.jpg": []}}))
    with pytest.raises(ValueError, match=r"2007_1\.jpg.*unknown class 'catt'.*Did you mean 'cat'"):
        resolve_candidates("file", "2007_1", torch.zeros(1, 1), class_names("voc21"), 255, str(path),
                           {"aeroplane": ["plane"]})
    with pytest.raises(KeyError, match="2007_2"):
        resolve_candidates("file", "2007_2", torch.zeros(1, 1), class_names("voc21"), 255, str(path))
