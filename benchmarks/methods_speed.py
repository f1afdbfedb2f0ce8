"""Seconds per image of every registered method's post-processing, on the same synthetic attention.

For each method of the registry (``methods.METHODS``; a method added later appears here
without edits) that needs a diffusion pass, the script composes its preset exactly as the
CLI does (``method=<name> dataset=<voc21 | cocostuff27>``: the method's default config,
e.g. SeeDiff's paper preset ``seediff`` and official-code preset ``seediff_code``), builds
the attention its ``attention_request`` asks for from ONE synthetic scene (a 64×64 label
map of background + 3 objects: block-structured self-attention, cross-attention whose
class token is high on its object), and times ``method.segment`` (the public API, as the
runner calls it) on fresh tensors per call, so no memo is hit.

It also prints the UNet prompts per image (rows of the diffusion batch: one per distinct
prompt text, one UNet pass each in a one-image batch) under the preset's candidate mode
and under ``candidates=gt`` (the 3 objects of the scene), for a dataset of C classes. A
preset that reads captions from a file (``candidates: file``, e.g. ``diffseg_semantic``)
gets a synthetic one naming the scene's objects.

    python benchmarks/methods_speed.py [--repeats 3] [--threads N] [--out 512] [--only diffseg,kmeans]
        [--set seediff_code.pamr_iterations=0]

Methods whose inputs this script cannot synthesise (e.g. a future method reading UNet
features) are listed as skipped with the reason, not dropped silently. Numbers are
pipeline timings on synthetic (random-structure) attention, not accuracy figures.
Calls taking over ``--slow`` seconds are timed once (a second call would not change the
figure but doubles the run).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.types import AttentionMaps, AttentionRequest, PromptQuery, SegmentContext  # noqa: E402
from methods.attention_ops import block_attention  # noqa: E402

LATENT = 64
#: the synthetic scene's objects: VOC class names (open-vocabulary) / segment ids (unsupervised)
OBJECTS = ("cat", "dog", "person")
DATASET = {"open_vocabulary": "voc21", "unsupervised": "cocostuff27"}


def scene_labels(n: int = LATENT) -> torch.Tensor:
    """(n, n) int64: 0 = background, 1..3 = a rectangle, a disc and a band."""
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    labels = torch.zeros(n, n, dtype=torch.long)
    labels[(yy > n // 8) & (yy < n // 2) & (xx > n // 10) & (xx < n // 2)] = 1
    labels[(yy - 5 * n // 8) ** 2 + (xx - 5 * n // 8) ** 2 < (n // 5) ** 2] = 2
    labels[(yy > 7 * n // 8)] = 3
    return labels


def scene_image(labels: torch.Tensor, out_size: Tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """uint8 (3, H, W): one colour per segment plus noise (for colour-based refinements such as PAMR)."""
    palette = torch.tensor([[120, 110, 100], [200, 60, 40], [40, 160, 70], [60, 70, 200]], dtype=torch.float32)
    image = palette[labels].permute(2, 0, 1)[None]
    image = F.interpolate(image, size=out_size, mode="nearest")[0]
    image = image + 12 * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 255).to(torch.uint8)


def token_position(query: PromptQuery) -> List[int]:
    """Stand-in for the tokenizer: position of the word's first token (BOS = 0, one token per word)."""
    if not query.word:
        return []
    before = query.text.split(query.word)[0]
    return [1 + len(before.split())]


def cross_attention(
    labels: torch.Tensor, sides: Sequence[int], queries: Sequence[PromptQuery], query_segment: Sequence[Optional[int]],
    positions: Sequence[Sequence[int]], generator: torch.Generator,
) -> Dict[int, torch.Tensor]:
    """{side: (P, side², 77)} rows summing to 1: the word token of a query whose class is a
    segment of the scene is high on that segment, everything else is noise."""
    one_hot = F.one_hot(labels, int(labels.max()) + 1).permute(2, 0, 1).float()[None]
    out = {}
    for s in sides:
        fractions = F.avg_pool2d(one_hot, labels.shape[-1] // s)[0].reshape(-1, s * s)  # (segments, s²)
        logits = torch.randn(len(queries), s * s, 77, generator=generator)
        for p, (segment, pos) in enumerate(zip(query_segment, positions)):
            for k in pos:
                logits[p, :, k] += 4.0 * (fractions[segment] if segment is not None else 0.0) + 1.0
        out[s] = torch.softmax(logits, dim=-1)
    return out


def compose_method(name: str, dataset: str, overrides: Sequence[str]):
    """(MethodSpec, class names) of ``method=<name> dataset=<dataset>`` composed as the CLI does."""
    from benchmark.compose import compose_config
    from benchmark.config import validate_method
    from benchmark.data.reference import class_names

    from benchmark.__main__ import CONF_DIR
    from benchmark.config import MethodSpec
    from benchmark.schema import ExtractionConfig
    from methods import get_method

    if not (Path(CONF_DIR) / "method" / f"{name}.yaml").is_file():  # a plugin without a preset: its defaults
        cls = get_method(name)
        if overrides:
            raise SystemExit(f"--set {name}.*: method {name!r} has no conf/method/{name}.yaml to override")
        return MethodSpec(name, cls, cls.Settings(), ExtractionConfig(), [cls.Params()], []), class_names(dataset)
    cfg = compose_config([f"method={name}", f"dataset={dataset}", *overrides])
    return validate_method(cfg.method), class_names(dataset)


def unet_rows(method, ctx: SegmentContext) -> int:
    """UNet rows per image: one per distinct prompt embedding (``DiffusionModel.capture``)."""
    from benchmark.models.diffusion import prompt_rows

    return len(set(prompt_rows(method.queries(ctx))))


def candidate_counts(method, spec, class_names, ctx: SegmentContext, gt_classes: List[int]) -> Tuple[str, int, int]:
    """(preset candidate mode, prompts per image under it, prompts per image with candidates=gt)."""
    from benchmark.candidates import resolve_candidates

    mode = getattr(spec.settings, "candidates", None)
    if mode is None:
        rows = unet_rows(method, ctx)
        return "-", rows, rows
    label = torch.tensor(gt_classes).view(1, -1)
    candidates_file = getattr(spec.settings, "candidates_file", None)
    counts = []
    for m in (mode, "gt"):
        if m == "clip" or (m == "file" and not candidates_file):  # needs CLIP / a file: not synthetic
            counts.append(-1)
            continue
        ctx.candidates, ctx.caption = resolve_candidates(m, ctx.image_id, label, class_names, 255, candidates_file)
        try:
            counts.append(unet_rows(method, ctx))
        except ValueError:  # e.g. a method that prompts with a caption, which candidates=gt has not
            counts.append(-1)
    # post-processing is timed under the preset's mode (all classes: one map per class; a
    # file: the synthetic captions file), gt otherwise
    timed = mode if mode in ("all", "gt") or (mode == "file" and candidates_file) else "gt"
    ctx.candidates, ctx.caption = resolve_candidates(timed, ctx.image_id, label, class_names, 255, candidates_file)
    return mode, counts[0], counts[1]


def synthetic_captions_file(folder: Path) -> Path:
    """A candidates file (``method.candidates_file``) for the synthetic image: its caption
    names the scene's objects, its classes are them (what a captioner + filter would give)."""
    import json

    path = folder / "synthetic_captions.json"
    caption = "a photo of a " + ", a ".join(OBJECTS[:-1]) + f" and a {OBJECTS[-1]}"
    path.write_text(json.dumps({"synthetic": {"caption": caption, "classes": list(OBJECTS)}}))
    return path


def synthesise(method, params, ctx: SegmentContext, labels: torch.Tensor, segment_classes: Dict[str, int],
               generator: torch.Generator) -> AttentionMaps:
    request: AttentionRequest = method.attention_request(params)
    queries = method.queries(ctx)
    self_maps = block_attention(labels, request.self_resolutions, sharpness=6.0, noise=0.7, generator=generator)
    per_prompt = getattr(method.extract, "self_attn_per_prompt", False) and len(queries) > 1
    if per_prompt:
        self_maps = {s: a.expand(len(queries), -1, -1).contiguous() for s, a in self_maps.items()}
    positions = [token_position(q) for q in queries]
    names = {name.lower(): seg for name, seg in segment_classes.items()}
    query_segment = [names.get((q.word or "").lower()) for q in queries]
    cross = cross_attention(labels, request.cross_resolutions, queries, query_segment, positions, generator)
    # per-layer head sums (SeeDiff's official per-layer normalisation): 3 layers of 5 heads
    # with different peak heights, so the per-layer min-max has work to do
    layers = {
        s: torch.stack([cross[s] * 5.0 * (1.0 + 0.5 * k) for k in range(3)]) for s in request.cross_layer_resolutions
    }
    features = {name: block_features(labels, generator) for name in request.features}
    return AttentionMaps(self_attn=self_maps, cross_attn=cross, queries=list(queries), token_positions=positions,
                         cross_attn_layers=layers, features=features)


def block_features(labels: torch.Tensor, generator: torch.Generator, channels: int = 1280) -> torch.Tensor:
    """(1, N, C) block-output tokens at latent/4 (DiffCut's deepest attention down stage: 16 x 16
    at 512 px, C = 1280 as SD's): one random direction per segment plus noise."""
    side = labels.shape[-1] // 4
    small = labels[::4, ::4][:side, :side].reshape(-1)
    directions = torch.randn(int(labels.max()) + 1, channels, generator=generator)
    return (directions[small] + 0.5 * torch.randn(small.numel(), channels, generator=generator))[None]


def override_error(name: str, overrides: Sequence[str]) -> Optional[str]:
    """The config error that the ``--set`` overrides of one method cause, or None: the
    preset is composed with and without them (a preset reading captions from a file gets
    the synthetic one, as :func:`time_method` gives it), so a misspelled key or a wrong
    value is the user's error, not a method this script cannot time."""
    if not overrides:
        return None
    from benchmark.config import ConfigError
    from methods import get_method

    dataset = DATASET.get(get_method(name).task, "cocostuff27")
    with tempfile.TemporaryDirectory(prefix="methods_speed_") as folder:
        captions = [f"method.candidates_file={synthetic_captions_file(Path(folder))}"]
        for extra in ([], captions):
            try:
                compose_method(name, dataset, [*extra, *overrides])
                return None
            except ConfigError as err:
                error = str(err)
            try:
                compose_method(name, dataset, extra)
            except ConfigError:
                continue  # the preset needs more than this (e.g. the captions file): try with it
            return error
    return None


def time_method(name: str, args: argparse.Namespace, overrides: Sequence[str]) -> dict:
    from methods import get_method

    cls = get_method(name)
    if not cls.needs_diffusion:
        return {"skipped": "needs no diffusion pass (reads external predictions)"}
    from benchmark.config import ConfigError

    dataset = DATASET.get(cls.task, "cocostuff27")
    try:
        spec, class_names = compose_method(name, dataset, overrides)
    except ConfigError as err:  # e.g. a method that needs a captions file to be configured
        from omegaconf import OmegaConf

        from benchmark.__main__ import CONF_DIR

        preset = Path(CONF_DIR) / "method" / f"{name}.yaml"
        reads_file = preset.is_file() and OmegaConf.load(preset).get("candidates") == "file"
        if not reads_file or any(o.startswith("method.candidates_file=") for o in overrides):
            return {"skipped": f"its preset needs more than synthetic inputs: {err}"}
        # a preset reading captions / candidates from a file (e.g. diffseg_semantic): the synthetic one
        captions = synthetic_captions_file(Path(tempfile.mkdtemp(prefix="methods_speed_")))
        spec, class_names = compose_method(name, dataset, [*overrides, f"method.candidates_file={captions}"])
    method = spec.cls(settings=spec.settings, extract=spec.extract)
    params = spec.points[0]
    generator = torch.Generator().manual_seed(0)
    labels = scene_labels()
    out_size = (args.out, args.out)
    lowered = [c.lower() for c in class_names]
    if cls.task == "open_vocabulary":
        gt_classes = [lowered.index(o) for o in OBJECTS]
        segment_classes = {o: i + 1 for i, o in enumerate(OBJECTS)}
        if lowered and lowered[0] == "background":
            gt_classes = [0] + gt_classes
    else:
        gt_classes, segment_classes = [0, 1, 2, 3], {}
    ctx = SegmentContext(
        image_id="synthetic", out_size=out_size, class_names=class_names, n_gt_classes=len(gt_classes),
        image=scene_image(labels, out_size, generator),
    )
    mode, n_preset, n_gt = candidate_counts(method, spec, class_names, ctx, gt_classes)
    steps = int(getattr(spec.extract, "steps", 1) or 1)
    try:
        attn = synthesise(method, params, ctx, labels, segment_classes, generator)
    except Exception as err:  # a method whose inputs are not attention maps
        return {"skipped": f"cannot synthesise its inputs ({type(err).__name__}: {err})"}
    wall, cpu = [], []
    for i in range(args.repeats + 1):
        fresh = AttentionMaps(
            self_attn={s: a.clone() for s, a in attn.self_attn.items()},
            cross_attn={s: a.clone() for s, a in attn.cross_attn.items()},
            queries=list(attn.queries), token_positions=[list(p) for p in attn.token_positions],
            cross_attn_layers={s: a.clone() for s, a in attn.cross_attn_layers.items()},
            features={n: f.clone() for n, f in attn.features.items()},
        )
        t, c = time.perf_counter(), time.process_time()
        labels_out = method.segment(fresh, ctx, params)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if i == 0 and wall[0] > args.slow:
            break
    if len(wall) > 1:  # the first call allocates buffers and warms caches
        wall, cpu = wall[1:], cpu[1:]
    assert tuple(labels_out.shape) == out_size, (name, labels_out.shape)
    return {
        "wall": median(wall), "spread": (min(wall), max(wall)), "cpu": median(cpu), "calls": len(wall),
        "mode": mode, "prompts": n_preset, "prompts_gt": n_gt, "steps": steps, "classes": len(class_names),
        "segments": int(torch.unique(labels_out).numel()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method (after one warm-up call)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=int, default=512, help="label map side in pixels")
    parser.add_argument("--only", default="", help="comma-separated method names (default: every registered method)")
    parser.add_argument("--slow", type=float, default=5.0, help="seconds above which a method is timed once")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="config override for one method, e.g. seediff_code.pamr_iterations=0")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from methods import METHODS

    names = [n for n in args.only.split(",") if n] or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"--only: unknown method(s) {unknown}; registered: {', '.join(METHODS)}")
    overrides: Dict[str, List[str]] = {}
    for item in args.set:
        target, _, value = item.partition(".")
        if target not in METHODS or "=" not in value:
            parser.error(f"--set {item!r}: expected METHOD.KEY=VALUE with a registered METHOD")
        overrides.setdefault(target, []).append(f"method.{value}")
    for target, items in overrides.items():  # a typo fails here, before minutes of timings
        error = override_error(target, items)
        if error:
            parser.error(f"--set {target}.*: {error}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, output {args.out}x{args.out}, "
          f"synthetic {LATENT}x{LATENT}-latent attention (background + 3 objects); pipeline timing, not accuracy")
    print(f"{'method':<17}{'s/image':>8} {'min..max':>15}{'cpu s':>8}{'calls':>6}  {'candidates':<11}"
          f"{'prompts/image':>14}{'(gt)':>6}{'steps':>6}{'segments':>9}")
    for name in names:
        row = time_method(name, args, overrides.get(name, []))
        if "skipped" in row:
            print(f"{name:<17}skipped: {row['skipped']}")
            continue
        spread = f"{row['spread'][0]:.3f}..{row['spread'][1]:.3f}"
        # -1: not countable on synthetic inputs (CLIP filter; candidates=gt for a captions preset)
        prompts, prompts_gt = ("n/a" if row[k] < 0 else str(row[k]) for k in ("prompts", "prompts_gt"))
        print(f"{name:<17}{row['wall']:>8.3f} {spread:>15}{row['cpu']:>8.3f}{row['calls']:>6}  {row['mode']:<11}"
              f"{prompts:>14}{prompts_gt:>6}{row['steps']:>6}{row['segments']:>9}", flush=True)
        print(f"seconds_per_image_{name}={row['wall']:.4f}")
        if row["prompts"] >= 0:
            print(f"unet_prompts_per_image_{name}={row['prompts'] * row['steps']}")


if __name__ == "__main__":
    main()
