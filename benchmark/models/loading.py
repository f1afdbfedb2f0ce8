"""Resolve ``ModelConfig.path`` to local files and load the five SD components.

Order: a local folder is used as is; a hub id is looked up in the local Hugging Face
cache (``HF_HUB_CACHE`` / ``HF_HOME``) without touching the network; only when it is not
there, ``model.download=true`` and ``HF_HUB_OFFLINE`` is unset does it download (only the
files of the five components). Otherwise loading fails at once, naming what was tried and
how to provide the weights.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from benchmark.models.config import TINY_NAME, ModelConfig

log = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: components of SDXL-family folders (SDXL, SSD-1B, Segmind-Vega), loaded when present
SDXL_COMPONENTS = ("text_encoder_2", "tokenizer_2")
_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelNotFoundError(FileNotFoundError):
    """The weights of a configured model are not available locally."""


def hub_offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str:
    """The HF hub cache, read from the environment at call time (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(path: str) -> bool:
    """'org/name' (what the Hub accepts); anything else is a filesystem path."""
    return bool(_HUB_ID.match(path))


def weight_patterns(variant: Optional[str]) -> List[str]:
    """Files of the five components (weights of one variant only)."""
    suffix = f".{variant}" if variant else ""
    return [
        "model_index.json",
        *(f"{c}/*.json" for c in COMPONENTS + SDXL_COMPONENTS),
        "tokenizer/*.txt",
        "tokenizer_2/*.txt",
        f"unet/diffusion_pytorch_model{suffix}.safetensors",
        f"vae/diffusion_pytorch_model{suffix}.safetensors",
        f"text_encoder/model{suffix}.safetensors",
        f"text_encoder_2/model{suffix}.safetensors",
    ]


def _how_to_provide(repo_id: str, revision: Optional[str]) -> str:
    includes = " ".join(f'"{p}"' for p in weight_patterns(None))
    rev = f" --revision {revision}" if revision else ""
    return (
        f"Provide the weights in one of these ways:\n"
        f"  * download them once into the HF cache: huggingface-cli download {repo_id}{rev} --include {includes}\n"
        f"    (newer huggingface_hub: `hf download ...` with the same arguments);\n"
        f"  * point model.path at a local diffusers folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/): "
        f"model.path=/local/folder;\n"
        f"  * or allow a download now with model.download=true (needs network and HF_HUB_OFFLINE unset)."
    )


def resolve_model_path(cfg: ModelConfig) -> Tuple[Path, str]:
    """(local folder, fingerprint) of a configured hub id or folder; never the network unless allowed."""
    path = os.path.expanduser(str(cfg.path))
    if os.path.isdir(path):
        folder = Path(path).resolve()
        missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
        if missing:
            raise ModelNotFoundError(
                f"model.path={cfg.path!r} is a folder but lacks the component folder(s) {missing}; expected a diffusers "
                f"pipeline folder with {', '.join(c + '/' for c in COMPONENTS)}"
            )
        return folder, "local:" + fingerprint_folder(folder)
    if not is_hub_id(cfg.path):
        raise ModelNotFoundError(
            f"model.path={cfg.path!r}: no such folder (and not a Hugging Face Hub id of the form 'org/name'). "
            f"Set model.path to a diffusers folder with {', '.join(c + '/' for c in COMPONENTS)}."
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    patterns = weight_patterns(cfg.variant)
    try:
        folder = snapshot_download(
            cfg.path, revision=cfg.revision, cache_dir=cache, local_files_only=True, allow_patterns=patterns
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        if not cfg.download or hub_offline():
            reason = "HF_HUB_OFFLINE is set" if hub_offline() else "model.download is false"
            raise ModelNotFoundError(
                f"model {cfg.name!r}: hub id {cfg.path!r} (revision {cfg.revision or 'main'}) is not in the local "
                f"Hugging Face cache {cache}, there is no local folder of that name, and {reason}.\n" + _how_to_provide(cfg.path, cfg.revision)
            ) from err
        log.info("downloading %s (revision %s) into %s", cfg.path, cfg.revision or "main", cache)
        folder = snapshot_download(cfg.path, revision=cfg.revision, cache_dir=cache, allow_patterns=patterns)
    folder = Path(folder)
    commit = folder.name  # snapshots/<commit hash>
    return folder, f"{cfg.path}@{commit}"


def fingerprint_folder(folder: Path, full_hash_limit: int = 64 << 20, samples: int = 16, block: int = 1 << 20) -> str:
    """Content hash of a diffusers folder's components.

    Files up to ``full_hash_limit`` bytes (configs, tokenizer, small weights) are hashed
    whole; larger weight files by their size and ``samples`` evenly spaced 1 MiB blocks,
    which tells apart any two checkpoints in practice at a fraction of the cost of
    hashing gigabytes. Paths are relative, so a moved folder keeps its fingerprint.
    """
    digest = hashlib.sha256()
    files = sorted(p for c in COMPONENTS + SDXL_COMPONENTS for p in (folder / c).rglob("*") if p.is_file())
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}:{size}\n".encode())
        with open(file, "rb") as handle:
            if size <= full_hash_limit:
                digest.update(handle.read())
                continue
            for i in range(samples):
                handle.seek((size - block) * i // (samples - 1))
                digest.update(handle.read(block))
    return digest.hexdigest()[:16]


def fingerprint_modules(*modules: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (used for the tiny model built in code)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_components(folder: Path, cfg: ModelConfig) -> dict:
    """The five components from a local diffusers folder (local files only), plus
    ``text_encoder_2`` (CLIPTextModelWithProjection) and ``tokenizer_2`` of SDXL-family
    folders (both subfolders present)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    dtype = cfg.torch_dtype
    common = dict(local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, variant=cfg.variant, **common)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, variant=cfg.variant, **common)
        text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", torch_dtype=dtype, variant=cfg.variant, **common
        )
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **common)
        # DDIM: the schedule (betas) comes from the folder's config whatever class it names;
        # add_noise is the same for every DDPM-family scheduler and DDIM is the generator
        scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler", **common)
        extra = {}
        present = [c for c in SDXL_COMPONENTS if (folder / c).is_dir()]
        if present and len(present) != len(SDXL_COMPONENTS):
            raise ValueError(f"folder has {present} but not {sorted(set(SDXL_COMPONENTS) - set(present))}")
        if present:
            extra["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", torch_dtype=dtype, variant=cfg.variant, **common
            )
            extra["tokenizer_2"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2", **common)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"model {cfg.name!r}: could not load the components from {folder} "
            f"(variant {cfg.variant or 'none'}): {err}"
        ) from err
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, **extra)


def load_model(cfg: ModelConfig):
    """A ``DiffusionModel`` for ``cfg`` (the tiny SD when ``cfg.path`` is None)."""
    from benchmark.models.diffusion import DiffusionModel
    from benchmark.models.tiny import TINY_BUILDERS, TINY_VERSION

    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"load_model expects a ModelConfig, got {type(cfg).__name__}")
    if cfg.path is None:
        if cfg.name not in TINY_BUILDERS:  # ModelConfig already refuses this; keep the guard for hand-built objects
            raise ValueError(f"model.path is null for model {cfg.name!r}")
        components = TINY_BUILDERS[cfg.name](cfg.seed)
        modules = [components[k] for k in ("unet", "vae", "text_encoder", "text_encoder_2") if components.get(k) is not None]
        prefix = "tiny" if cfg.name == TINY_NAME else cfg.name.replace("_", "-")
        fingerprint = f"{prefix}-v{TINY_VERSION}:" + fingerprint_modules(*modules)
        model_id = f"{cfg.name} (random weights, seed {cfg.seed})"
    else:
        folder, fingerprint = resolve_model_path(cfg)
        components = load_components(folder, cfg)
        model_id = cfg.path if fingerprint.startswith(f"{cfg.path}@") else str(folder)
    return DiffusionModel(
        **components,
        device=cfg.torch_device(),
        dtype=cfg.torch_dtype,
        model_id=model_id,
        fingerprint=fingerprint,
        chunk_size=cfg.chunk_size,
        max_batch=cfg.max_batch,
    )


class LazyModel:
    """A configured model whose weights load on first use.

    Its fingerprint, device and dtype are known at once (a missing checkpoint still fails
    here, at start), so a run whose remaining images are all in the attention cache never
    loads the UNet, VAE and text encoder. The tiny model is built at once: building it is
    cheaper than anything else, and its fingerprint comes from its modules.
    """

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self._model = None
        if cfg.path is None:
            self._model = load_model(cfg)
            self.fingerprint = self._model.fingerprint
        else:
            _, self.fingerprint = resolve_model_path(cfg)
        self.device = cfg.torch_device()
        self.dtype = cfg.torch_dtype

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _configs(self) -> Tuple[dict, dict]:
        """(UNet config, VAE config) without loading weights (the folder's JSON files)."""
        import json

        if self._model is not None:
            return dict(self._model.unet.config), dict(self._model.vae.config)
        folder, _ = resolve_model_path(self.cfg)
        configs = []
        for component in ("unet", "vae"):
            path = folder / component / "config.json"
            try:
                configs.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as err:
                raise ModelNotFoundError(f"model {self.cfg.name!r}: cannot read {path}: {err}") from err
        return configs[0], configs[1]

    def check_request(self, request, image_size: int, explicit: Sequence[Any] = ()):
        """Fail at start when this model cannot serve ``request`` at ``image_size`` px: the side
        is not a multiple of the model's size multiple, no attention grid of a requested kind,
        a side the user named (``explicit``: ``ExplicitSides``) where it has no attention, or a
        requested feature module that its UNet lacks (built on the meta device from the
        config: no weights read). The message names what the model has; it is a user error
        (``ConfigError``: printed alone, exit code 2), not a traceback. Returns the request
        fitted to the model (``fit_request``: the sides it will capture)."""
        from benchmark.config import ConfigError

        try:
            return self._check_request(request, image_size, explicit)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def _check_request(self, request, image_size: int, explicit: Sequence[Any] = ()) -> None:
        from benchmark.models.diffusion import check_explicit_sides, fit_request

        unet_config, vae_config = self._configs()
        vae_factor = 2 ** (len(vae_config.get("block_out_channels", (0, 0, 0, 0))) - 1)
        multiple = vae_factor * 2 ** (len(unet_config["block_out_channels"]) - 1)
        if image_size < multiple or image_size % multiple:
            raise ValueError(
                f"method.extract.image_size={image_size}: model {self.cfg.name!r} needs a positive multiple of {multiple} "
                f"(VAE factor {vae_factor} x UNet downsampling)"
            )
        fitted = fit_request(unet_config, request, image_size // vae_factor, vae_factor, self.cfg.name)
        check_explicit_sides(unet_config, image_size // vae_factor, explicit, vae_factor, self.cfg.name)
        if request.features:
            from benchmark.attention.features import resolve_feature

            if self._model is not None:
                unet = self._model.unet
            else:
                from diffusers import UNet2DConditionModel

                with torch.device("meta"):
                    unet = UNet2DConditionModel.from_config(unet_config)
            for name in request.features:
                resolve_feature(unet, name)
        return fitted

    def get(self):
        """The ``DiffusionModel`` (loaded now if it was not yet)."""
        if self._model is None:
            self._model = load_model(self.cfg)
        return self._model
