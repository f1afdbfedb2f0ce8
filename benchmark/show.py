"""Look at what the model attends to and what a method makes of it, for one image.

    python -m benchmark.show IMAGE [--out DIR] [--points N] [--prompt TEXT] [--words W ...] [key=value ...]

IMAGE is an image file or an image id of the configured dataset (``dataset=...``; an id
also brings its ground truth). The overrides are those of ``python -m benchmark``
(``model=``, ``method=``, ``method.extract.*``, ``cache.dir=`` ...). The method's own
attention comes from the attention cache when ``cache.dir`` holds it (the same key as an
evaluation run), else from one diffusion pass; sides the method does not read are
captured by one more pass so every resolution can be shown. Written into ``--out``
(default ``outputs/show/<image id>``):

* ``cross_attention.png``  heat map of each prompt word over the image, per attention
  side and fused (DAAM-style: the sides' maps upsampled to the image and summed, scaled
  by the maximum). Methods that read no word (DiffSeg, K-Means) show the words of
  ``--prompt`` (each distinct word, at its first occurrence) from a separate pass
  (default: ``method.extract.prompt``);
* ``self_attention.png``   the self-attention map of a few query points per side;
* the method's intermediate products: ``diffseg_merges.png`` (proposals after each merge
  iteration), ``score_maps.png`` (open-vocabulary: fused cross-attention before and score
  maps after the method's self-attention step), ``seediff_growth.png`` (SeeDiff: CA,
  seeds, expansion after each side, final map);
* ``prediction.png``       the method's label map (first grid point) over the image, with
  the ground truth when IMAGE is a dataset id;
* ``maps.pt``              the tensors drawn (for notebooks).

Random-weight models (``model=tiny``) make pictures of the pipeline, not of a model: every
figure then carries the PIPELINE CHECK mark.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmark.types import AttentionMaps, AttentionRequest, PromptQuery, Sample

#: heat-map colour map (matplotlib) and its opacity over the image
HEAT_CMAP = "jet"
HEAT_ALPHA = 0.5
MAX_ROWS = 8


class ShowError(ValueError):
    """A user error of ``benchmark.show`` (bad image, id or option); the message says which."""


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------
def load_image_file(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB of an image file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise ShowError(f"benchmark.show: cannot read image file {path}: {err}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_input(spec: str, dataset_cfg: Any) -> Tuple[Sample, Any, bool]:
    """(sample, dataset-like object with class_names / ignore_index, has ground truth)."""
    path = Path(spec)
    if path.is_file():
        image = load_image_file(path)
        try:
            from benchmark.data import build_dataset

            dataset: Any = build_dataset(dataset_cfg)
        except Exception:  # noqa: BLE001 - only the class list is needed for a file
            from benchmark.data.reference import class_names

            dataset = SimpleNamespace(class_names=class_names(dataset_cfg.name), ignore_index=255)
        label = torch.full(tuple(image.shape[1:]), int(dataset.ignore_index), dtype=torch.long)
        return Sample(path.stem, image, label), dataset, False
    from benchmark.data import SkippedSample, build_dataset

    dataset = build_dataset(dataset_cfg)
    if spec not in dataset.ids:
        shown = ", ".join(dataset.ids[:5]) + (" ..." if len(dataset.ids) > 5 else "")
        raise ShowError(
            f"benchmark.show: {spec!r} is neither an image file nor an image id of dataset={dataset_cfg.name} "
            f"({len(dataset.ids)} ids: {shown})"
        )
    sample = dataset[dataset.ids.index(spec)]
    if isinstance(sample, SkippedSample):
        raise ShowError(f"benchmark.show: image {spec} of dataset={dataset_cfg.name} cannot be read: {sample.reason}")
    return sample, dataset, True


# --------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------
def word_maps(cross: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """(q, T) cross-attention of one prompt -> (r, r) map of a word: the sum over its
    sub-token columns (DAAM's word heat map)."""
    side = int(round(cross.shape[0] ** 0.5))
    return cross[:, list(positions)].float().sum(1).view(side, side)


def upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(..., r, r) -> (..., H, W) bilinear (half-pixel centres)."""
    from methods.attention_ops import resize_maps

    shape = maps.shape
    flat = maps.float().reshape(-1, shape[-2], shape[-1])
    return resize_maps(flat, tuple(size), "bilinear").reshape(shape[:-2] + tuple(size))


def fused_heat_map(per_side: Dict[int, torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
    """DAAM-style aggregation: every side's map upsampled to ``size`` and summed, divided
    by the maximum (Tang et al. 2023, DAAM; here with each side's layer mean)."""
    total = sum(upsample(m, size) for m in per_side.values())
    return total / total.max().clamp(min=1e-12)


def query_points(n: int) -> List[Tuple[float, float]]:
    """n query points (y, x) relative to the image, on a centred k×k grid (k = ⌈√n⌉)."""
    k = max(1, int(np.ceil(np.sqrt(n))))
    return [((i + 0.5) / k, (j + 0.5) / k) for i in range(k) for j in range(k)][: max(n, 0)]


def self_attention_of_point(self_attn: torch.Tensor, point: Tuple[float, float]) -> torch.Tensor:
    """(G, r², r²) self-attention -> (r, r) map of the query at relative (y, x) in [0, 1)
    (mean over prompt groups)."""
    side = int(round(self_attn.shape[-1] ** 0.5))
    row = min(int(point[0] * side), side - 1) * side + min(int(point[1] * side), side - 1)
    return self_attn[:, row, :].float().mean(0).view(side, side)


# --------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------
def _suptitle(fig, title: str, pipeline_check: bool, fontsize: float = 8):
    """The figure's title wrapped to the figure's width, the PIPELINE CHECK mark on a line of
    its own (a one- or two-panel figure is narrower than the title and the mark: unwrapped,
    both were cut at the figure's edges). Returns the Text artist."""
    import textwrap

    from benchmark.visualize import PIPELINE_MARK

    # about 0.6 em per character of DejaVu Sans; 72 points per inch
    chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)) - 2)
    lines = textwrap.wrap(title, chars) + (textwrap.wrap(f"[{PIPELINE_MARK}]", chars) if pipeline_check else [])
    return fig.suptitle("\n".join(lines), fontsize=fontsize, color="darkred" if pipeline_check else "black")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _normalised(m: torch.Tensor) -> np.ndarray:
    from methods.attention_ops import minmax

    return minmax(m.float().unsqueeze(0))[0].cpu().numpy()


def heat_grid(
    image: np.ndarray, rows: List[Tuple[str, List[Tuple[str, torch.Tensor]]]], path: Path, title: str,
    pipeline_check: bool, points: Optional[List[Tuple[float, float]]] = None, overlay_image: bool = True,
) -> Path:
    """A grid of heat maps: rows = (row name, [(column title, map (h, w))]); each map is
    upsampled to the image, min-max scaled and drawn over it with ``HEAT_CMAP``.
    ``points``: a relative (y, x) marker per row."""
    plt = _pyplot()
    height, width = image.shape[:2]
    n_cols = max(len(cols) for _, cols in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.2 * n_cols, 2.2 * len(rows) * height / width + 0.6),
                             squeeze=False)
    for r, (name, cols) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(cols):
                continue
            col_title, m = cols[c]
            heat = _normalised(upsample(m, (height, width))) if m.dim() == 2 else m
            if overlay_image:
                ax.imshow(image)
                ax.imshow(heat, cmap=HEAT_CMAP, alpha=HEAT_ALPHA, vmin=0, vmax=1)
            else:
                ax.imshow(heat, cmap=HEAT_CMAP, vmin=0, vmax=1, interpolation="nearest")
            if points is not None:
                ax.plot(points[r][1] * width, points[r][0] * height, "w+", markersize=10, markeredgewidth=2)
            ax.set_title(f"{name}\n{col_title}" if c == 0 else col_title, fontsize=7)
    _suptitle(fig, title, pipeline_check)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def label_grid(image: np.ndarray, panels: List[Tuple[str, np.ndarray]], path: Path, title: str, pipeline_check: bool) -> Path:
    """Label maps (ids coloured with the distinct palette) side by side over the image."""
    from benchmark.visualize import distinct_palette, overlay

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8), squeeze=False)
    for ax, (name, labels) in zip(axes[0], panels):
        pal = distinct_palette(int(labels.max()) + 1)
        ax.imshow(overlay(image, pal[labels]))
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    _suptitle(fig, title, pipeline_check)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# method intermediates (through the methods' own pure functions)
# --------------------------------------------------------------------------------------
def diffseg_intermediates(method: Any, attn: AttentionMaps, params: Any, size: Tuple[int, int]) -> List[Tuple[str, np.ndarray]]:
    """(title, label map at ``size``) after each DiffSeg merge iteration (argmax of the
    proposals, as the method's NMS)."""
    from methods.attention_ops import upsample_argmax

    side, history = method.proposals_by_iteration(attn, params)
    taus = params.thresholds()
    out = []
    for k, proposals in enumerate(history):
        labels = upsample_argmax(proposals.view(-1, side, side), size, params.upsample).cpu().numpy()
        out.append((f"iteration {k} (τ={taus[k]:g}): {proposals.shape[0]} proposals", labels))
    return out


def open_vocab_intermediates(method: Any, attn: AttentionMaps, params: Any) -> List[Tuple[str, List[Tuple[str, torch.Tensor]]]]:
    """Per prompt: fused cross-attention (before) and the method's score map (after its
    self-attention step), both at attention resolution."""
    fused = method.fused_cross_attention(attn, params) if attn.cross_attn else None
    after = method.prompt_maps(attn, params)
    rows = []
    for p, q in enumerate(attn.queries[:MAX_ROWS]):
        cols = []
        if fused is not None and fused.shape[0] == after.shape[0]:
            cols.append(("fused cross-attention (before)", fused[p]))
        cols.append((f"{method.name} score map (after)", after[p]))
        rows.append((f"{q.word!r}", cols))
    return rows


def seediff_intermediates(method: Any, attn: AttentionMaps, params: Any) -> List[Tuple[str, List[Tuple[str, torch.Tensor]]]]:
    """Per prompt: the seeds' CA map, the first seeds, the map after each expansion side
    (iterative expansion, ``stage=ire`` truncated at that side) and the final soft map."""
    from methods.attention_ops import resize_maps
    from methods.seediff import foreground_seeds, normalize_maps, seediff_maps, word_attention

    side = params.ca_resolution
    ca = word_attention(attn.cross_attn[side], attn.token_positions, params.token_rule, attn.queries).view(-1, side, side)
    sides = method.expansion_sides(params)
    sa = {s: attn.self_attn[s].float() for s in sides if s in attn.self_attn}
    first = sides[0]
    seeds = foreground_seeds(
        normalize_maps(resize_maps(ca, (first, first), params.resize), params.normalize).reshape(ca.shape[0], -1), params
    ).view(-1, first, first).float()
    grown = []
    if params.stage in ("ire", "be") and all(s in sa for s in sides):
        ire = dataclasses.replace(params, stage="ire")
        for k in range(1, len(sides) + 1):
            grown.append((f"expanded to {sides[k - 1]}", seediff_maps(ca, sa, sides[:k], ire)))
    final = method.prompt_maps(attn, params)
    rows = []
    for p, q in enumerate(attn.queries[:MAX_ROWS]):
        cols = [(f"CA {side}×{side}", ca[p]), (f"seeds at {first}", seeds[p])]
        cols += [(name, g[p]) for name, g in grown]
        cols.append((f"final ({params.stage})", final[p]))
        rows.append((f"{q.word!r}", cols))
    return rows


# --------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------
def _merge(base: AttentionMaps, extra: AttentionMaps) -> AttentionMaps:
    merged = AttentionMaps(dict(base.self_attn), dict(base.cross_attn), list(base.queries), [list(p) for p in base.token_positions])
    for r, a in extra.self_attn.items():
        merged.self_attn.setdefault(r, a)
    for r, a in extra.cross_attn.items():
        merged.cross_attn.setdefault(r, a)
    return merged


def show(image: str, overrides: Sequence[str] = (), out: Optional[Path] = None, n_points: int = 4,
         prompt: Optional[str] = None, words: Sequence[str] = ()) -> Dict[str, Any]:
    """Write the figures of the module docstring; returns {"out", "written", "maps", "passes"}."""
    from benchmark.compose import compose_config
    from benchmark.models import LazyModel
    from benchmark.runner import RANDOM_WEIGHT_MODELS, Runner
    from methods.attention_ops import standard_self_resolutions

    try:
        cfg = compose_config(list(overrides))
    except Exception as err:  # noqa: BLE001 - Hydra's override / composition errors name the key
        raise ShowError(f"benchmark.show: {err}") from None
    runner = Runner(cfg, Path(out) if out else Path("outputs/show"))  # validates the config
    v = runner.v
    method_cls = v.method.cls
    if not method_cls.needs_diffusion:
        raise ShowError(f"benchmark.show: method={v.method.name} reads no attention; choose a diffusion method")
    sample, dataset, has_gt = load_input(image, v.dataset)
    if not has_gt and (getattr(v.method.settings, "candidates", None) == "gt" or getattr(v.method.settings, "mode", None) == "gt"):
        raise ShowError(
            "benchmark.show: an image file has no ground truth, so method settings that read it "
            "(method.candidates=gt, method.mode=gt) cannot be used; give a dataset image id or method.candidates=all"
        )
    out = Path(out) if out else Path("outputs/show") / sample.image_id
    out.mkdir(parents=True, exist_ok=True)
    # the runner's own building blocks: the same context, request and cache key as an evaluation
    runner.dataset = dataset
    runner.method = method = method_cls(settings=v.method.settings, extract=v.method.extract)
    request = None
    runner.explicit_sides = []
    for p in v.method.points:
        r = method.attention_request(p)
        request = r if request is None else request.union(r)
        for entry in method.explicit_sides(p) if hasattr(method, "explicit_sides") else ():
            if entry not in runner.explicit_sides:
                runner.explicit_sides.append(entry)
    runner.request = request
    ctx = runner._context(sample)
    model = LazyModel(v.model)
    runner.check_model(model)  # sides the user named, anchor grid, ...: as a run checks them
    cache = None
    if v.cache.dir:
        from benchmark.attention.cache import AttentionCache

        cache = AttentionCache(v.cache.dir, dtype=v.cache.dtype)
    maps_list, passes_list = runner._attention([sample], [ctx], model, cache)
    attn, passes = maps_list[0], passes_list[0]
    params = v.method.points[0]
    size = tuple(ctx.out_size)
    pipeline = getattr(v.model, "name", None) in RANDOM_WEIGHT_MODELS
    heading = f"{v.method.name}, model {getattr(v.model, 'name', '?')}, image {sample.image_id}"
    image_np = sample.image.permute(1, 2, 0).cpu().numpy()
    if image_np.shape[:2] != size:
        from benchmark.visualize import fit_image

        image_np = fit_image(image_np, size)

    # every standard side for display (one more pass for the sides the method did not read)
    sides = standard_self_resolutions(v.method.extract.image_size)
    has_words = any(q.word for q in attn.queries)
    extra = AttentionRequest(
        self_resolutions=tuple(s for s in sides if s not in attn.self_attn),
        cross_resolutions=tuple(s for s in sides if s not in attn.cross_attn) if has_words else (),
        self_layers=request.self_layers, cross_layers=request.cross_layers,
    )
    shown = attn
    if not extra.empty:
        more = model.get().capture([sample.image], [list(attn.queries)], extra, v.method.extract, image_ids=[sample.image_id])[0]
        shown = _merge(attn, more)
        passes += 1

    # cross-attention words: the method's prompt words, or --prompt's words
    word_rows: List[Tuple[str, Dict[int, torch.Tensor]]] = []
    if has_words:
        for p, q in enumerate(shown.queries):
            if q.word and shown.token_positions[p]:
                word_rows.append((f"{q.text!r}: {q.word}", {r: word_maps(shown.cross_attn[r][p], shown.token_positions[p])
                                                            for r in sorted(shown.cross_attn)}))
    else:
        text = prompt if prompt is not None else v.method.extract.prompt
        if text:
            # each distinct word once: a word's tokens are found at its first occurrence
            chosen = list(dict.fromkeys(list(words) or re.findall(r"[A-Za-z][\w'-]*", text)))
            dm = model.get()
            query = PromptQuery(text=text)
            daam = dm.capture([sample.image], [[query]], AttentionRequest(cross_resolutions=tuple(sides)),
                              dataclasses.replace(v.method.extract, prompt=text), image_ids=[sample.image_id])[0]
            passes += 1
            for w in chosen:
                try:
                    positions = dm.token_positions(text, w)
                except ValueError as err:
                    raise ShowError(f"benchmark.show: --words {w!r}: {err}") from None
                word_rows.append((f"{text!r}: {w}", {r: word_maps(daam.cross_attn[r][0], positions) for r in sorted(daam.cross_attn)}))
    written: List[Path] = []
    tensors: Dict[str, Any] = {"image": sample.image, "self_attn_points": {}, "cross_attn_words": {}}
    if word_rows:
        rows = []
        for name, per_side in word_rows[:MAX_ROWS]:
            cols = [(f"{r}×{r}", m) for r, m in per_side.items()]
            cols.append(("fused (DAAM-style)", fused_heat_map(per_side, size)))
            rows.append((name, cols))
            tensors["cross_attn_words"][name] = per_side
        written.append(heat_grid(image_np, rows, out / "cross_attention.png", f"cross-attention per word — {heading}", pipeline))
    if shown.self_attn:
        pts = query_points(n_points)
        rows = []
        for y, x in pts:
            cols = [(f"{r}×{r}", self_attention_of_point(shown.self_attn[r], (y, x))) for r in sorted(shown.self_attn)]
            rows.append((f"query ({y:.2f}, {x:.2f})", cols))
            tensors["self_attn_points"][(y, x)] = dict(cols)
        written.append(heat_grid(image_np, rows, out / "self_attention.png", f"self-attention of query points — {heading}",
                                 pipeline, points=pts))
    # the method's intermediates (on its own attention: what the evaluation scores)
    from methods.diffseg import DiffSeg
    from methods.open_vocab import OpenVocabularyMethod
    from methods.seediff import SeeDiff

    if isinstance(method, DiffSeg):
        panels = diffseg_intermediates(method, attn, params, size)
        if panels:
            written.append(label_grid(image_np, panels, out / "diffseg_merges.png", f"DiffSeg proposals per merge iteration — {heading}", pipeline))
    elif isinstance(method, SeeDiff):
        written.append(heat_grid(image_np, seediff_intermediates(method, attn, params), out / "seediff_growth.png",
                                 f"SeeDiff seeds and expansions — {heading}", pipeline))
    elif isinstance(method, OpenVocabularyMethod):
        written.append(heat_grid(image_np, open_vocab_intermediates(method, attn, params), out / "score_maps.png",
                                 f"{v.method.name}: score maps before / after self-attention — {heading}", pipeline))
    written.append(_prediction_figure(method, attn, ctx, params, sample, dataset, has_gt, v, out, heading, pipeline))
    torch.save(tensors, out / "maps.pt")
    written.append(out / "maps.pt")
    return {"out": out, "written": written, "maps": shown, "passes": passes}


def _prediction_figure(method, attn, ctx, params, sample, dataset, has_gt, v, out: Path, heading: str, pipeline: bool) -> Path:
    from benchmark.report import point_label
    from benchmark.visualize import Panel, dataset_palette, example_figure, matched_classes

    pred = method.segment(attn, ctx, params).cpu().numpy()
    names = list(dataset.class_names)
    label = sample.label.cpu().numpy()
    metric = v.metric.name
    if has_gt:
        mapping = matched_classes(pred, label, metric, len(names), int(dataset.ignore_index))
    elif method.task == "unsupervised":
        mapping = {}  # no ground truth to match segments to: greys
    else:
        mapping = matched_classes(pred, label, "miou", len(names), int(dataset.ignore_index))
    grid = {"results": [{"params": dataclasses.asdict(params)}], "grid_keys": list(v.method.grid_keys)}
    title = point_label(grid, 0) or "prediction"
    return example_figure(
        sample.image.permute(1, 2, 0).cpu().numpy(), label, [Panel(pred, mapping, title)], names,
        dataset_palette(v.dataset.name, names), out / "prediction.png", int(dataset.ignore_index),
        title=heading, pipeline_check=pipeline,
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.show",
        description="Attention heat maps and a method's intermediate products for one image.",
        epilog="Any other argument key=value is a config override of `python -m benchmark` "
               "(model=, method=, dataset=, method.extract.*, cache.dir=, ...).",
    )
    parser.add_argument("image", help="an image file, or an image id of the configured dataset")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/show/<image id>)")
    parser.add_argument("--points", type=int, default=4, help="self-attention query points (default 4)")
    parser.add_argument("--prompt", default=None,
                        help="text whose words' cross-attention is shown for methods that read no word (default: method.extract.prompt)")
    parser.add_argument("--words", nargs="*", default=(), help="words of --prompt to show (default: every word)")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        parser.error(f"unrecognised arguments {bad}: overrides are key=value")
    if args.points < 1:
        parser.error(f"--points {args.points}: expected at least 1 query point")
    from benchmark.config import ConfigError, error_message, full_tracebacks, is_user_error

    try:
        result = show(args.image, overrides, args.out, args.points, args.prompt, args.words)
    except Exception as err:  # user errors (config, data, model files) as in `python -m benchmark`
        if not (isinstance(err, (ShowError, ConfigError)) or is_user_error(err)) or full_tracebacks():
            raise
        print(f"Error: {error_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    for p in result["written"]:
        print(f"wrote {p}")
    print(f"{result['passes']} diffusion pass(es) run")


if __name__ == "__main__":
    main()
