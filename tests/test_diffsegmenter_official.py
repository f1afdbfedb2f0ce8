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
from benchmark.types import PromptQuery

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


# -- items 1-3: prompts, "++" and the two-token read ----------------------------------------------
def official_columns(folder: str, prompt: str, name: str, tokenizer) -> list:
    """The columns the official code reads, by its own rules (prompt written with "++")."""
    words = prompt.split(" ")
    if folder == "voc12":  # ptp_stable_best.py
        return [4, 5] if len(words) > 4 and words[4].endswith("ing") else [4]
    embs_len = len(tokenizer.encode(name)) - 2
    word_len = len(name.split(" "))
    step = 1 if folder == "voc10" else 2  # ptp_stable_voc10.py [3+e, 4+e]; ptp_stable_coco.py [3+e, 5+e]
    try:
        two = words[3 + word_len].endswith("ing")
    except IndexError:
        two = False
    return [3 + embs_len, 3 + embs_len + step] if two else [3 + embs_len]


CAPTIONS = ["", "running on grass", "sitting on a bed", "ring", "in the sky", "standing", "is running"]


@pytest.mark.parametrize("folder", ["voc12", "voc10", "coco"])
def test_two_token_read_equals_the_official_columns(tiny_model, folder):
    from benchmark.config import validate_method
    from methods.open_vocab import token_weights

    experiment, dataset = PRESETS[folder]
    spec = preset(experiment)["method"]
    method = validate_method({**yaml.safe_load((REPO / "conf/method/diffsegmenter.yaml").read_text()), **spec,
                              "candidates": "all", "captioner": "none", "caption_prompt": False})
    params = method.points[0]
    template = spec["template"]
    names = {"voc12": ["dog", "motorbike", "people"], "voc10": ["dog", "motorbike", "person"],
             "coco": ["dog", "traffic light", "teddy bear", "toothbrus"]}[folder]
    for name in names:
        for rest in CAPTIONS:
            text = f"{template} {name}" + (f" {rest}" if rest else "")
            official_prompt = f"{template} {name}++" + (f" {rest}" if rest else "")
            q = PromptQuery(text=text, word=name)
            pos = tiny_model.token_positions(text, name)
            w = token_weights([pos], params.token_rule, 77, [q], params.ing_offset)[0]
            got = torch.nonzero(w).flatten().tolist()
            want = official_columns(folder, official_prompt, name, tiny_model.tokenizer)
            assert got == want, (text, got, want)
            assert torch.allclose(w[got], torch.full((len(got),), 1.0 / len(got)))


def test_two_token_read_changes_the_fused_map():
    from methods.open_vocab import fuse_cross_attention

    cross = {8: torch.rand(1, 64, 77, generator=torch.Generator().manual_seed(0))}
    q = PromptQuery(text="a photograph of dog running on grass", word="dog")
    one = fuse_cross_attention(cross, [[4]], "first", [1.0], [q], ing_offset=0)
    two = fuse_cross_attention(cross, [[4]], "first", [1.0], [q], ing_offset=1)
    mean = cross[8][0][:, [4, 5]].mean(1).view(8, 8)
    torch.testing.assert_close(two[0], (mean - mean.min()) / (mean.max() - mean.min()))
    assert not torch.allclose(one, two)


@pytest.mark.parametrize("folder", ["voc12", "voc10", "coco"])
def test_preset_prompts_carry_name_plus_plus_on_the_last_word_even_without_caption(folder):
    from benchmark.types import SegmentContext
    from methods.open_vocab import OpenVocabSettings, plan_prompts

    experiment, dataset = PRESETS[folder]
    spec = preset(experiment)["method"]
    names = class_names(dataset)
    settings = OpenVocabSettings(template=spec["template"], synonyms=spec["synonyms"], candidates="file",
                                 candidates_file="x.json", caption_prompt=True)
    multi = [i for i, n in enumerate(names) if " " in n] or [1]
    ctx = SegmentContext("img", (4, 4), names, candidates=[1] + multi[:1], caption=None)
    plan = plan_prompts(ctx, settings)
    for q in plan.queries:
        assert q.word_weight == pytest.approx(1.21)  # "a photograph of dog++": the caption added nothing
        assert q.text == f"{spec['template']} {q.word}"
        last = q.word.split(" ")[-1]
        assert (q.weight_word or q.word) == last  # "traffic light++" weights "light" only


def test_only_the_last_words_tokens_are_weighted(tiny_model):
    text, word = "a photography of traffic light on a road", "traffic light"
    plain = tiny_model.encode_prompts([text])[0]
    empty = tiny_model.encode_prompts([""])[0]
    got = tiny_model.encode_queries([PromptQuery(text, word, word_weight=1.21, weight_word="light")])[0]
    pos = tiny_model.token_positions(text, "light")
    assert pos == tiny_model.token_positions(text, word)[-len(pos):]
    expected = plain.clone()
    expected[pos] = empty[pos] + 1.21 * (plain[pos] - empty[pos])
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="not the end of word"):
        tiny_model.encode_queries([PromptQuery(text, word, word_weight=1.21, weight_word="traffic")])


# -- item 6 / 14: background protocols, published numbers beside comparable runs only ---------------
def test_official_sweep_is_the_official_range_and_conflicts_with_a_user_grid():
    from benchmark.compose import compose_config
    from benchmark.config import ConfigError, validate

    v = validate(compose_config(["experiment=diffsegmenter_voc21", "method.candidates=all", "method.captioner=none",
                                 "method.caption_prompt=false"]))
    # evaluation_voc12.py: for i in range(30, 75): t = i/100.0
    assert [p.bg_threshold for p in v.method.points] == [i / 100.0 for i in range(30, 75)]
    assert v.method.grid_keys == ["bg_threshold"]
    fixed = validate(compose_config(["experiment=diffsegmenter_voc21", "method.candidates=all", "method.captioner=none",
                                     "method.caption_prompt=false", "method.bg_protocol=fixed", "method.bg_threshold=0.4"]))
    assert [p.bg_threshold for p in fixed.method.points] == [0.4] and fixed.method.grid_keys == []
    with pytest.raises(ConfigError, match="official_sweep.*method.grid.bg_threshold"):
        validate(compose_config(["experiment=diffsegmenter_voc21", "method.candidates=all", "method.captioner=none",
                                 "method.caption_prompt=false", "+method.grid.bg_threshold=[0.3,0.5]"]))


def test_best_point_follows_the_official_tie_rules():
    from benchmark.tables import best_index

    results = [{"metrics": {"mIoU": v}} for v in (10.0, 30.0, 20.0, 30.0, 5.0)]
    assert best_index(results, "mIoU", "first") == 1  # evaluation_voc12.py / voc10: mIoU > max_mIoU
    assert best_index(results, "mIoU", "last") == 3  # evaluation_coco.py: mIoU >= max_mIoU


RUN = {"method": "diffsegmenter", "dataset": "voc21", "metric": "miou", "model": "sd15", "candidates": "file",
       "bg_protocol": "official_sweep", "subset": None}
REF = {"method": "diffsegmenter", "dataset": "voc21", "metric": "miou", "model": "sd15"}


@pytest.mark.parametrize("change, reason", [
    ({}, None),
    ({"candidates": "clip"}, None),
    ({"candidates": "gt"}, "method.candidates=gt (image-level ground-truth labels"),
    ({"candidates": "all"}, "method.candidates=all"),
    ({"bg_protocol": "fixed"}, "method.bg_protocol=fixed"),
    ({"subset": "dataset.limit=4"}, "subset: dataset.limit=4"),
    ({"dataset": "context60"}, "dataset=context60"),
    ({"metric": "hungarian_dataset"}, "metric=hungarian_dataset"),
    ({"model": "sd14"}, "published for model=sd15, this run has model=sd14"),
])
def test_published_numbers_need_the_reference_protocol(change, reason):
    from benchmark.tables import published_numbers, withheld_reasons

    entry = published_numbers(REF)
    reasons = withheld_reasons(REF, entry, {**RUN, **change})
    if reason is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reason in reasons[0], reasons


@pytest.mark.slow  # ~25 s: 3 images x 45 sweep points on the tiny SD
def test_voc21_preset_runs_end_to_end_with_the_official_candidates_file(tmp_path):
    import dataset_layouts as layouts
    import pandas as pd

    from benchmark.compose import run_with_overrides

    path = shared_file("voc12")
    layouts.write_voc(tmp_path / "voc")
    out = run_with_overrides(
        ["experiment=diffsegmenter_voc21", "model=tiny", f"dataset.root={tmp_path / 'voc'}", "dataset.num_workers=0",
         "method.candidates=file", f"method.candidates_file={path}", "method.captioner=none",
         "method.extract.image_size=128", "run.progress=false",
         # the comparison path itself: a model other than sd15, another image size or a 3-image
         # split (VOC val: 1449) withholds them
         "reference.model=tiny", "reference.extract.image_size=128", "reference.n_images=3"],
        tmp_path / "run",
    )
    p = out.payload
    assert p["n_images"] == 3 and len(p["results"]) == 45
    assert p["protocol"]["bg_protocol"] == "official_sweep" and p["protocol"]["subset"] is None
    assert p["published"]["mIoU"] == 60.1 and p["published_withheld"] == []
    frame = pd.read_csv(tmp_path / "run" / "table.csv")
    best = [i for i, s in enumerate(frame["selected"].fillna("")) if s]
    values = [r["metrics"]["mIoU"] for r in p["results"]]
    assert best == [values.index(max(values))]  # VOC keeps the first best
    assert frame["mIoU (paper)"].notna().tolist() == [i == best[0] for i in range(45)]
    table = (tmp_path / "run" / "table.md").read_text()
    assert "ORACLE" in table and "PIPELINE CHECK" in table


def _official_voc_labels(cross, sa, prompts, out_size, threshold, classes, n_classes):
    """ptp_stable_best.py + evaluation_voc12.py on given per-prompt attention, written from
    their lines: columns [4,5] when prompt.split(" ")[4] ends in "ing" else [4]; per side
    bilinear to 64, min-max, x 0.3/0.5/0.1/0.1 (8/16/32/64); the prompt's OWN SA64 @ vec;
    bilinear to the label size, min-max x 255; /255, background row = threshold, argmax."""
    weight = [0.3, 0.5, 0.1, 0.1]
    images = []
    for p, prompt in enumerate(prompts):
        words = prompt.split(" ")
        cols = [4, 5] if len(words) > 4 and words[4].endswith("ing") else [4]
        out = []
        for idx, res in enumerate([8, 16, 32, 64]):
            att = cross[res][p][:, cols].mean(1).view(res, res)
            if res != 64:
                att = torch.nn.functional.interpolate(att[None, None], size=(64, 64), mode="bilinear",
                                                      align_corners=False)[0, 0]
            out.append((att - att.min()) / (att.max() - att.min()) * weight[idx])
        images.append((sa[p] @ torch.stack(out).sum(0).view(4096, 1)).view(64, 64))
    images = torch.nn.functional.interpolate(torch.stack(images)[:, None], size=out_size, mode="bilinear",
                                             align_corners=False)[:, 0]
    tensor = torch.zeros(n_classes, *out_size)
    for p, c in enumerate(classes):
        tensor[c] = (images[p] - images[p].min()) / (images[p].max() - images[p].min()) * 255 / 255
    tensor[0] = threshold
    return tensor.argmax(0)


def test_voc_preset_post_processing_equals_the_official_code_per_prompt_sa_and_two_token_read():
    from benchmark.schema import ExtractionConfig
    from benchmark.types import AttentionMaps, SegmentContext
    from methods.diffsegmenter import DiffSegmenter
    from methods.open_vocab import OpenVocabParams, OpenVocabSettings

    g = torch.Generator().manual_seed(11)
    names = class_names("voc21")
    classes = [8, 12]  # cat, dog
    prompts = ["a photograph of cat sitting on a sofa", "a photograph of dog on grass"]
    queries = [PromptQuery(t, names[c], 1.21) for t, c in zip(prompts, classes)]
    cross = {r: torch.softmax(3 * torch.randn(2, r * r, 77, generator=g), -1) for r in (64, 32, 16, 8)}
    # two different self-attentions: the classes' own passes
    sa = torch.softmax(4 * torch.randn(2, 4096, 4096, generator=g), -1)
    attn = AttentionMaps({64: sa}, cross, queries, [[4], [4]])
    out_size = (37, 50)
    spec = preset("diffsegmenter_voc21")["method"]
    settings = OpenVocabSettings(template=spec["template"], caption_prompt=True, candidates="file",
                                 candidates_file="x.json")
    method = DiffSegmenter(settings, ExtractionConfig())
    ctx = SegmentContext("img", out_size, names, candidates=classes, caption=dict(zip(["cat", "dog"], prompts)))
    for threshold in (0.3, 0.55):
        params = OpenVocabParams(bg_threshold=threshold, token_rule=spec["token_rule"], ing_offset=spec["ing_offset"])
        want = _official_voc_labels(cross, sa, prompts, out_size, threshold, classes, len(names))
        got = DiffSegmenter.segment(method, attn, ctx, params)
        assert float((got == want).float().mean()) > 0.999
        # the image-averaged SA (the old preset) is measurably another computation
        averaged = AttentionMaps({64: sa.mean(0, keepdim=True)}, cross, queries, [[4], [4]])
        method._best_memo = type(method._best_memo)()
        assert float((DiffSegmenter.segment(method, averaged, ctx, params) == want).float().mean()) < 0.999
        method._best_memo = type(method._best_memo)()
        # and one column for "cat sitting" (the old reading) is another computation too
        one = OpenVocabParams(bg_threshold=threshold, token_rule=spec["token_rule"], ing_offset=0)
        assert float((DiffSegmenter.segment(method, attn, ctx, one) == want).float().mean()) < 0.999


@pytest.mark.parametrize("experiment", ["diffsegmenter_voc21", "diffsegmenter_context60", "diffsegmenter_coco_object"])
def test_presets_refine_each_class_with_its_own_self_attention(experiment):
    from benchmark.compose import compose_config
    from benchmark.config import validate

    v = validate(compose_config([f"experiment={experiment}", "method.candidates=all", "method.captioner=none",
                                 "method.caption_prompt=false"]))
    assert v.method.extract.self_attn_per_prompt is True


BLIP_OUTPUTS = ["{p}", "{p} running on grass", "{p}s sitting on a bench", "{p} in the sky"]


@pytest.mark.parametrize("folder", ["voc12", "voc10", "coco"])
def test_caption_prompts_equal_the_official_prompt_without_plus_plus(folder):
    """Official prompt from a BLIP output o conditioned on p = "{template} {name}":
    VOC p + "++" + o[len(p):]; Context/COCO o.split(" ") with word 2+word_len := last_word++.
    The harness writes the text without "++" and weights the last word (word_weight)."""
    from benchmark.types import SegmentContext
    from methods.open_vocab import OpenVocabSettings, plan_prompts

    experiment, dataset = PRESETS[folder]
    spec = preset(experiment)["method"]
    names = class_names(dataset)
    multi = next((i for i, n in enumerate(names) if " " in n), 8)
    for c in (8, multi):
        prompt_name = (spec["synonyms"].get(names[c]) or [names[c]])[0]
        p = f"{spec['template']} {prompt_name}"
        for out in BLIP_OUTPUTS:
            o = out.format(p=p)
            if folder == "voc12":
                official = p + "++" + o[len(p):]
            else:
                words = o.split(" ")
                words[2 + len(prompt_name.split(" "))] = prompt_name.split(" ")[-1] + "++"
                official = " ".join(words)
            settings = OpenVocabSettings(template=spec["template"], synonyms=spec["synonyms"], candidates="file",
                                         candidates_file="x.json", caption_prompt=True,
                                         caption_splice=spec["caption_splice"])
            ctx = SegmentContext("img", (4, 4), names, candidates=[c], caption={prompt_name: o})
            (q,) = plan_prompts(ctx, settings).queries
            if folder == "voc12" and out.startswith("{p}s"):
                continue  # "dog++s sitting": the official text glues the caption to "++" (see README)
            assert q.text == official.replace("++", ""), (q.text, official)
            assert q.word_weight == pytest.approx(1.21)


def test_run_protocol_of_composed_presets_names_why_numbers_are_withheld():
    from benchmark.compose import compose_config
    from benchmark.config import validate
    from benchmark.tables import published_numbers, run_protocol, withheld_reasons

    base = ["experiment=diffsegmenter_context60", "method.captioner=none", "method.caption_prompt=false"]
    v = validate(compose_config(base + ["method.candidates=gt"]))
    reasons = withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, 5105, 5105))
    assert len(reasons) == 1 and "method.candidates=gt" in reasons[0]
    v = validate(compose_config(base + ["method.candidates=file", "method.candidates_file=x.json", "dataset.limit=4"]))
    reasons = withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, 4, 4))
    assert len(reasons) == 1 and "dataset.limit=4" in reasons[0]
    v = validate(compose_config(base + ["method.candidates=file", "method.candidates_file=x.json"]))
    assert withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, 5105, 5105)) == []
    # images skipped on error are not the full split either
    reasons = withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, 5100, 5105))
    assert len(reasons) == 1 and "5100 of 5105 images" in reasons[0]



def test_published_numbers_are_withheld_beside_a_short_split():
    """Leftover item 1: a 3-image split showed VOC's published numbers (only a log warning)."""
    from benchmark.compose import compose_config
    from benchmark.config import validate
    from benchmark.tables import full_split_tolerance, published_numbers, run_protocol, withheld_reasons

    v = validate(compose_config(["experiment=diffsegmenter_voc21", "method.candidates=file",
                                 "method.candidates_file=x.json", "method.captioner=none", "method.caption_prompt=false"]))

    def reasons(n, published):
        return withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, n, n, published))

    assert reasons(1449, 1449) == [] and reasons(1449, None) == []
    short = reasons(3, 1449)
    assert len(short) == 1 and "published on the 1449 images of the full split, this run evaluated 3" in short[0]
    assert "0.5% = 7 images" in short[0]
    assert full_split_tolerance(1449) == 7 and reasons(1442, 1449) == [] and len(reasons(1441, 1449)) == 1
    # Context's usual conversion (5104 of the published 5105) is the full split
    ctx = validate(compose_config(["experiment=diffsegmenter_context60", "method.candidates=file",
                                   "method.candidates_file=x.json", "method.captioner=none", "method.caption_prompt=false"]))
    assert withheld_reasons(ctx.reference, published_numbers(ctx.reference),
                            run_protocol(ctx, ctx.method.cls, 5104, 5104, 5105)) == []
    # a subset says so once (not also as a short split)
    sub = validate(compose_config(["experiment=diffseg_cocostuff27", "dataset.limit=4"]))
    got = withheld_reasons(sub.reference, published_numbers(sub.reference), run_protocol(sub, sub.method.cls, 4, 4, 2175))
    assert len(got) == 1 and "dataset.limit=4" in got[0]


@pytest.mark.parametrize("override, key, preset, value", [
    ("method.extract.timestep=200", "timestep", "300", "200"),
    ("method.extract.image_size=768", "image_size", "512", "768"),
    ("method.extract.noise=true", "noise", "False", "True"),
    ("method.extract.latent=sample", "latent", "'mean'", "'sample'"),
])
def test_published_numbers_are_withheld_beside_other_extraction_settings(override, key, preset, value):
    """Leftover item 2: extraction overrides of the experiment's preset showed the paper's numbers."""
    from benchmark.compose import compose_config
    from benchmark.config import validate
    from benchmark.tables import published_numbers, run_protocol, withheld_reasons

    def reasons(overrides):
        v = validate(compose_config(["experiment=diffseg_cocostuff27"] + overrides))
        return withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, 2175, 2175, 2175))

    assert reasons([]) == [] and reasons(["method.extract.seed=3"]) == []
    assert reasons([override]) == [
        f"published with method.extract.{key}={preset} (the experiment's preset), this run has method.extract.{key}={value}"
    ]
    # post-processing (an in-run grid, or a single value) is not extraction: still comparable
    assert reasons(["method.grid.kl_threshold=[0.9,1.1]", "method.merge_iterations=2"]) == []


def test_every_experiment_with_published_numbers_names_its_extraction_settings():
    """reference.extract is the experiment file's own method.extract block (a YAML alias): the
    composed preset equals it, so an unchanged preset stays comparable."""
    import dataclasses

    import yaml

    from benchmark.compose import compose_config
    from benchmark.config import validate

    experiments = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")
                         if "reference" in (yaml.safe_load(p.read_text()) or {}))
    assert len(experiments) == 11
    for name in experiments:
        extra = ["method.candidates=file", "method.candidates_file=x.json", "method.captioner=none",
                 "method.caption_prompt=false"] if name.startswith("diffsegmenter") else []
        v = validate(compose_config([f"experiment={name}"] + extra))
        ref = v.reference["extract"]
        assert {"image_size", "timestep", "noise", "latent"} <= set(ref), name
        assert {k: dataclasses.asdict(v.method.extract)[k] for k in ref} == ref, name
    # an override changes the run, not the reference
    moved = validate(compose_config(["experiment=diffcut_voc21", "method.extract.timestep=7"]))
    assert moved.method.extract.timestep == 7 and moved.reference["extract"]["timestep"] == 50


def test_reference_extract_keys_are_checked_at_start():
    from benchmark.compose import compose_config
    from benchmark.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"reference.extract must map method.extract keys"):
        validate(compose_config(["experiment=diffseg_cocostuff27", "+reference.extract.timesteps=3"]))
    with pytest.raises(ConfigError, match=r"reference.n_images must be a positive image count"):
        validate(compose_config(["experiment=diffseg_cocostuff27", "+reference.n_images=0"]))


def test_published_numbers_are_withheld_beside_another_split():
    """Found by a new user: dataset.split=train printed the paper's val numbers with a Δ."""
    from benchmark.compose import compose_config
    from benchmark.config import validate
    from benchmark.tables import published_numbers, run_protocol, withheld_reasons

    base = ["experiment=diffsegmenter_voc21", "method.candidates=file", "method.candidates_file=x.json",
            "method.captioner=none", "method.caption_prompt=false"]
    v = validate(compose_config(base))
    assert withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, 1449, 1449)) == []
    v = validate(compose_config(base + ["dataset.split=train"]))
    reasons = withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, 1464, 1464))
    assert reasons == ["published on the val split, this run has dataset.split=train"]
    v = validate(compose_config(["experiment=diffseg_cocostuff27", "dataset.split=train2017"]))
    reasons = withheld_reasons(v.reference, published_numbers(v.reference), run_protocol(v, v.method.cls, 9, 9))
    assert any("val2017 split" in r and "train2017" in r for r in reasons), reasons
