"""``python -m benchmark.generate``: SeeDiff's generate mode — synthetic image–mask pairs.

For every class of a class list and every index k < ``n_per_class``: generate an image
from noise with the method's prompt ("a photo of a {class}"), ``method.extract.steps``
steps of ``scheduler`` (default: PNDM, the default scheduler of the SD v1.4 pipeline that
SeeDiff's official code runs; 50 steps = 51 UNet calls; ``scheduler=ddim``: 50 calls) and
guidance ``method.extract.guidance_scale`` (7, as src/seediff_app.py ``run``), capture the
attention of the conditional half only, averaged over every UNet call, decode the image
to uint8 by truncation (``to_uint8``; src/ptp_utils.py ``latent2image``), grow the class
mask with the method (``method=seediff`` or ``seediff_code``; PAMR reads that uint8
image), and write the pair in the Pascal VOC layout::

    out_dir/JPEGImages/<id>.jpg
    out_dir/SegmentationClass/<id>.png          palette PNG: class index, 0 background,
                                                255 uncertain (optional, ``uncertain_from``)
    out_dir/ImageSets/Segmentation/<split>.txt
    out_dir/generation.json                     settings of the run (resume checks them)

so ``python -m benchmark dataset=voc21 dataset.root=out_dir dataset.split=<split>`` (or
``dataset=folder``) reads them back. Ids are ``<class>_<k:06d>``; each image is seeded
from (``seed``, id), so a pair does not depend on which other pairs are generated.
Re-running the same command resumes: pairs already written are skipped; every file is
written to a temporary name and renamed, the mask last.

Examples::

    python -m benchmark.generate method=seediff classes=voc21 n_per_class=2000 out_dir=gen/voc model=sd2_base
    python -m benchmark.generate method=seediff_code model=sd14 classes=voc21 n_per_class=10 out_dir=gen/code
    python -m benchmark.generate model=tiny method.extract.image_size=128 method.extract.steps=3 \\
        method.ca_resolution=4 n_per_class=1 out_dir=/tmp/gen          # seconds: a pipeline check
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig

from benchmark.config import ConfigError, json_safe, validate_method, validate_model
from benchmark.data.io import read_split_ids
from benchmark.data.reference import class_names, datasets_dir, read_class_list
from benchmark.fileio import atomic_path, atomic_write_text

log = logging.getLogger("benchmark.generate")

CONFIG_NAME = "generate"
#: label value of pixels left uncertain (ignored by the dataset readers)
UNCERTAIN = 255
SETTINGS_FILE = "generation.json"


@dataclass
class GenerateConfig:
    """The top-level keys of ``conf/generate.yaml`` besides ``model`` and ``method``."""

    #: class list: a name under datasets/classes/ (voc21, cocostuff27, ...) or a text file path
    classes: str = "voc21"
    #: generate only these classes (names of the list); None = every class but background
    class_subset: Optional[List[str]] = None
    #: images per class (ids <class>_000000 .. <class>_{n-1})
    n_per_class: int = 1
    #: output folder (VOC layout); required
    out_dir: Optional[str] = None
    #: name of the split file ImageSets/Segmentation/<split>.txt
    split: str = "train"
    #: base seed; image <id> is generated from seed derived from (seed, id)
    seed: int = 0
    #: pixels whose soft mask M_final is in [uncertain_from, beta) get label 255 (None: off)
    uncertain_from: Optional[float] = None
    #: JPEG quality of the written images
    jpeg_quality: int = 95
    #: show a progress bar
    progress: bool = True
    #: denoising scheduler: pndm (SD v1.x's default PNDM, skip_prk_steps: what SeeDiff's
    #: official code runs; 50 steps = 51 UNet calls) | ddim (50 steps = 50 calls)
    scheduler: str = "pndm"
    #: decoded image -> uint8: truncate (the official code's astype(np.uint8)) | round
    to_uint8: str = "truncate"


def voc_palette() -> List[int]:
    """The Pascal VOC colour map as PIL's flat palette list (256 RGB entries)."""
    from benchmark.visualize import palette

    return palette(256).reshape(-1).tolist()


def load_class_list(spec: str) -> List[str]:
    """Class names of ``datasets/classes/<spec>.txt``, or of the text file ``spec``."""
    path = Path(spec).expanduser()
    if path.suffix == ".txt" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"classes={spec!r}: no such file (expected a text file with one class name per line)")
        names = read_class_list(path)
    else:
        available = sorted(p.stem for p in (datasets_dir() / "classes").glob("*.txt") if not p.stem.startswith("ovss_"))
        if spec not in available:
            from benchmark.registry import did_you_mean

            raise ConfigError(
                f"classes={spec!r}: unknown class list. Valid choices: {', '.join(available)} (or a path to a .txt file)."
                + did_you_mean(spec, available)
            )
        names = class_names(spec)
    if not names:
        raise ConfigError(f"classes={spec!r}: the class list is empty")
    return names


def image_id(class_name: str, index: int) -> str:
    """``<class>_<index:06d>`` with every character outside [A-Za-z0-9-] replaced by '-'."""
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', class_name.strip())}_{index:06d}"


def write_pair(root: Path, pair_id: str, image: torch.Tensor, mask: np.ndarray, jpeg_quality: int) -> None:
    """JPEGImages/<id>.jpg then SegmentationClass/<id>.png (palette), each atomically."""
    from PIL import Image

    pixels = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    with atomic_path(root / "JPEGImages" / f"{pair_id}.jpg") as temp:
        pixels.save(temp, format="JPEG", quality=jpeg_quality)
    label = Image.fromarray(mask.astype(np.uint8), mode="P")
    label.putpalette(voc_palette())
    with atomic_path(root / "SegmentationClass" / f"{pair_id}.png") as temp:
        label.save(temp, format="PNG")


def is_written(root: Path, pair_id: str) -> bool:
    return (root / "SegmentationClass" / f"{pair_id}.png").is_file() and (root / "JPEGImages" / f"{pair_id}.jpg").is_file()


def write_split(root: Path, split: str, ids: Sequence[str]) -> Path:
    """The split file: the ids given plus those already listed, sorted, one per line."""
    path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    listed = set(read_split_ids(path)) if path.is_file() else set()
    atomic_write_text(path, "".join(f"{i}\n" for i in sorted(listed | set(ids))))
    return path


class Generator:
    """One generate job: validated config, the model, the method and the output folder."""

    def __init__(self, cfg: DictConfig):
        from benchmark.config import to_dataclass

        top_keys = ["model", "method"] + [f.name for f in dataclasses.fields(GenerateConfig)]
        unknown = [k for k in cfg.keys() if k not in top_keys and k != "hydra"]
        if unknown:
            from benchmark.registry import did_you_mean

            raise ConfigError(
                f"Unknown config key '{unknown[0]}' of benchmark.generate. Valid keys: {', '.join(top_keys)}."
                + did_you_mean(unknown[0], top_keys)
            )
        plain = {k: cfg[k] for k in cfg.keys() if k not in ("model", "method", "hydra")}
        self.options: GenerateConfig = to_dataclass(plain, GenerateConfig, "generate")
        o = self.options
        if not o.out_dir:
            raise ConfigError("out_dir is required: out_dir=/path/to/folder (the VOC-layout output)")
        if o.n_per_class < 1:
            raise ConfigError(f"n_per_class={o.n_per_class}: expected >= 1")
        if o.uncertain_from is not None and not 0.0 <= o.uncertain_from <= 1.0:
            raise ConfigError(f"uncertain_from={o.uncertain_from}: expected a value in [0, 1] (or null)")
        if not 1 <= o.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality={o.jpeg_quality}: expected 1..100")
        if o.scheduler not in ("pndm", "ddim"):
            raise ConfigError(f"scheduler={o.scheduler!r}: expected pndm (SeeDiff's official code) or ddim")
        if o.to_uint8 not in ("truncate", "round"):
            raise ConfigError(f"to_uint8={o.to_uint8!r}: expected truncate (official code) or round")
        self.model_cfg = validate_model(cfg.model)
        self.spec = validate_method(cfg.method)
        if not hasattr(self.spec.cls, "prompt_scores"):
            raise ConfigError(
                f"method={self.spec.name!r} has no generate mode; use method=seediff or method=seediff_code"
            )
        if len(self.spec.points) != 1:
            raise ConfigError(
                f"method.grid has {len(self.spec.points)} points ({', '.join(self.spec.grid_keys)}): generate mode writes "
                "one mask per image; set the method keys directly instead of method.grid"
            )
        if self.spec.extract.steps < 2:
            raise ConfigError(
                f"method.extract.steps={self.spec.extract.steps}: generate mode denoises from noise; expected >= 2 (paper: 50)"
            )
        self.params = self.spec.points[0]
        if o.uncertain_from is not None and o.uncertain_from > self.params.beta:
            raise ConfigError(f"uncertain_from={o.uncertain_from} must be <= method.beta={self.params.beta}")
        self.class_names = load_class_list(o.classes)
        self.classes = self._chosen_classes()
        self.root = Path(o.out_dir).expanduser()
        self.method = self.spec.cls(settings=self.spec.settings, extract=self.spec.extract)
        self.cfg = cfg

    def _chosen_classes(self) -> List[int]:
        from benchmark.candidates import background_index

        bg = background_index(self.class_names)
        if self.options.class_subset is None:
            return [c for c in range(len(self.class_names)) if c != bg]
        chosen = []
        for name in self.options.class_subset:
            if name not in self.class_names:
                from benchmark.registry import did_you_mean

                raise ConfigError(
                    f"class_subset: {name!r} is not a class of {self.options.classes!r}." + did_you_mean(name, self.class_names)
                )
            if self.class_names.index(name) == bg:
                raise ConfigError("class_subset: background cannot be generated (it is what every mask is not)")
            chosen.append(self.class_names.index(name))
        return chosen

    # -- the settings record ------------------------------------------------------------
    def settings_record(self) -> Dict[str, Any]:
        """Everything that changes the written pairs (not which ids, progress or quality)."""
        return json_safe({
            "generator": "benchmark.generate (SeeDiff generate mode)",
            "method": self.spec.name,
            "model": dataclasses.asdict(self.model_cfg) | {"device": None, "chunk_size": None, "max_batch": None},
            "extract": dataclasses.asdict(self.spec.extract),
            "settings": dataclasses.asdict(self.spec.settings),
            "params": dataclasses.asdict(self.params),
            "class_names": self.class_names,
            "seed": self.options.seed,
            "uncertain_from": self.options.uncertain_from,
            "scheduler": self.options.scheduler,
            "to_uint8": self.options.to_uint8,
        })

    def check_settings(self) -> None:
        """Refuse to resume into a folder generated with other settings (the pairs would mix)."""
        path = self.root / SETTINGS_FILE
        record = self.settings_record()
        if path.is_file():
            previous = json.loads(path.read_text(encoding="utf-8"))
            differing = sorted(k for k in set(record) | set(previous) if record.get(k) != previous.get(k))
            if differing:
                raise ConfigError(
                    f"{path} records different generation settings ({', '.join(differing)}): resuming would mix pairs "
                    "made with other settings. Use a new out_dir (or delete the folder)."
                )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2))

    # -- the loop -----------------------------------------------------------------------
    def plan(self) -> List[Tuple[str, int]]:
        return [(image_id(self.class_names[c], k), c) for c in self.classes for k in range(self.options.n_per_class)]

    def run(self) -> Dict[str, Any]:
        from benchmark.models import load_model
        from benchmark.models.diffusion import derive_seed

        o = self.options
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.check_settings()
        planned = self.plan()
        todo = [(i, c) for i, c in planned if not is_written(self.root, i)]
        if len(todo) < len(planned):
            log.info("resuming: %d of %d pairs already in %s", len(planned) - len(todo), len(planned), self.root)
        request = self.method.attention_request(self.params)
        model = load_model(self.model_cfg) if todo else None
        bar = None
        if o.progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), unit="img", desc=f"generate {self.spec.name}", dynamic_ncols=True)
        try:
            for pair_id, c in todo:
                image, mask = self.generate_pair(model, request, pair_id, c, derive_seed(o.seed, pair_id))
                write_pair(self.root, pair_id, image, mask, o.jpeg_quality)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            # list what is complete, also after an interruption
            write_split(self.root, o.split, [i for i, _ in planned if is_written(self.root, i)])
        return {
            "out_dir": str(self.root),
            "split": o.split,
            "n_pairs": len(planned),
            "generated_now": len(todo),
            "random_weights": self.model_cfg.path is None,
        }

    def generate_pair(self, model, request, pair_id: str, class_index: int, seed: int) -> Tuple[torch.Tensor, np.ndarray]:
        """(uint8 image (3, S, S), uint8 mask (S, S)) of one id."""
        from benchmark.types import SegmentContext

        ctx = SegmentContext(
            image_id=pair_id, out_size=(self.spec.extract.image_size,) * 2, class_names=self.class_names,
            candidates=[class_index],
        )
        queries = self.method.queries(ctx)
        # one image per pair: a class with synonyms cycles through its prompt names
        query = queries[int(pair_id.rsplit("_", 1)[1]) % len(queries)]
        images, maps = model.generate(
            [query], request, self.spec.extract, seed=seed, scheduler_name=self.options.scheduler,
            to_uint8=self.options.to_uint8,
        )
        image, attn = images[0], maps[0]  # post-processing stays on the model's device
        ctx.image = image
        ctx.out_size = tuple(int(s) for s in image.shape[-2:])
        scores = self.method.prompt_scores(attn, ctx, self.params)[0]
        mask = torch.where(scores > self.params.bg_threshold, class_index, 0).to(torch.uint8)
        if self.options.uncertain_from is not None:
            soft = self.method.soft_masks(attn, ctx, self.params)[0]
            mask[(mask == 0) & (soft >= self.options.uncertain_from)] = UNCERTAIN
        return image, mask.cpu().numpy()


def generate(cfg: DictConfig) -> Dict[str, Any]:
    """Run one generate job from a composed config (tests and scripts call this)."""
    return Generator(cfg).run()


def compose_generate_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/generate.yaml`` with command-line style overrides, as the CLI does."""
    from benchmark.compose import compose_config

    return compose_config(overrides, config_name=CONFIG_NAME)


def print_summary(summary: Dict[str, Any]) -> None:
    print(
        f"{summary['n_pairs']} image-mask pairs ({summary['generated_now']} generated now) in {summary['out_dir']}; "
        f"read them back with: python -m benchmark dataset=voc21 dataset.root={summary['out_dir']} "
        f"dataset.split={summary['split']}"
    )
    if summary["random_weights"]:
        print("NOTE: PIPELINE CHECK ONLY: random-weight model; these images and masks are not data.")


def main(argv: Optional[List[str]] = None) -> None:
    import hydra

    from benchmark.__main__ import CONF_DIR, prepare_argv

    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0]] + prepare_argv(args)
    logging.getLogger("benchmark").setLevel(logging.INFO)

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=CONFIG_NAME)
    def job(cfg: DictConfig) -> None:
        print_summary(generate(cfg))

    job()


if __name__ == "__main__":
    main()
