"""``method.candidates=clip``: which classes an open-vocabulary method considers per image.

DiffSegmenter's category filter (official recipe, released only as precomputed JSON):
a class is a candidate when

* **image–text**: its CLIP zero-shot probability for the image (softmax over the
  dataset's non-background classes of CLIP's scaled cosine similarity between the image
  and ``clip_image_template`` filled with the class's names, max over its names) is
  ``>= clip_image_threshold`` (0.97), or
* **caption–class text–text** (needs ``captioner=blip``): the cosine similarity of CLIP
  text embeddings between a unit of the BLIP caption and one of the class's names is
  ``>= clip_text_threshold`` (0.8). Units (``clip_text_match``): ``phrases`` = the
  caption's words and adjacent word pairs (stop words dropped; pairs catch two-word names
  such as "dining table"), or ``caption`` = the whole caption.

How the official scores were normalised is not published; the above is this harness's
reading, with the thresholds as config keys.

Captions (``captioner=blip``): BLIP-large unconditional caption for the text criterion.
With ``method.caption_prompt=true`` the filter instead returns the official per-class
captions {prompt name: BLIP caption conditioned on "{template} {name}"} for the kept
classes, which the method appends to its prompts (one BLIP generation per prompt name).

With ``method.candidates=file`` (e.g. the official filter files, which hold no captions)
and ``captioner=blip``, only BLIP is loaded and :meth:`ClipCandidateFilter.captions_for`
captions the file's candidates, as the official ptp_stable_*.py do (BLIP conditioned on each
prompt, candidates read from the JSON).

Models load from a local folder or the local Hugging Face cache (never the network
unless ``method.filter_download=true`` and ``HF_HUB_OFFLINE`` is unset); a missing model
fails when the filter is built, i.e. at the start of a run.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from benchmark.candidates import background_index

#: words of a caption that never name a class
STOP_WORDS = frozenset(
    "a an the of on in at to with and or for from by is are was were be its it his her their this that these those "
    "there here some two three four many near next over under up down front back top side photograph photography "
    "photo picture image".split()
)

_DEFAULTS = dict(
    candidates="clip",
    clip_model="openai/clip-vit-large-patch14",
    clip_text_threshold=0.8,
    clip_image_threshold=0.97,
    clip_image_template="a photo of a {name}.",
    clip_text_match="phrases",
    captioner="none",
    captioner_model="Salesforce/blip-image-captioning-large",
    caption_max_tokens=30,
    filter_device="auto",
    filter_download=False,
    caption_prompt=False,
    template="a photograph of",
    synonyms=None,
)


def _setting(settings: Any, key: str) -> Any:
    return getattr(settings, key, _DEFAULTS[key]) if settings is not None else _DEFAULTS[key]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_pretrained(model_cls, processor_cls, ref: str, what: str, key: str, download: bool):
    """(model, processor) from a local folder or the local HF cache; a clear error otherwise."""
    from benchmark.models.loading import ModelNotFoundError, hub_cache_dir, hub_offline, is_hub_id

    ref = str(ref)
    path = Path(ref).expanduser()
    how = (
        f"Provide it with {key}=/path/to/folder (a {model_cls.__name__} saved with save_pretrained, together with its "
        f"processor files), or put the hub id into the Hugging Face cache on a machine with internet "
        f"(`huggingface-cli download <id>`, then copy HF_HOME), or set method.filter_download=true."
    )
    if path.is_dir():
        source, local_only = str(path), True
    elif is_hub_id(ref) and not path.exists():
        source, local_only = ref, (not download) or hub_offline()
    else:
        raise ModelNotFoundError(f"{what} {ref!r} ({key}): no such folder, and not a hub id 'org/name'. {how}")
    try:
        processor = processor_cls.from_pretrained(source, local_files_only=local_only)
        model = model_cls.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as err:
        where = f"folder {source}" if path.is_dir() else f"the Hugging Face cache {hub_cache_dir()}" + (
            "" if local_only else " or the Hub"
        )
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(
            f"{what} {ref!r} ({key}) could not be loaded from {where}: {first_line}. {how}"
        ) from err
    return model.eval().requires_grad_(False), processor


def caption_phrases(caption: str) -> List[str]:
    """Words and adjacent word pairs of a caption, stop words dropped, first occurrence order."""
    words = re.findall(r"[a-z0-9][a-z0-9'-]*", caption.lower())
    units = [w for w in words if w not in STOP_WORDS]
    pairs = [f"{a} {b}" for a, b in zip(words, words[1:]) if a not in STOP_WORDS and b not in STOP_WORDS]
    return list(dict.fromkeys(units + pairs))


def _features(output: Any) -> torch.Tensor:
    """Projected CLIP embeddings whether a tensor (transformers 4) or an output object (5)."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


class ClipCandidateFilter:
    """Per-image candidate classes (and captions) from CLIP and, optionally, BLIP.

    ``settings``: any object with the ``OpenVocabSettings`` filter keys (missing keys take
    the defaults above). Loading happens here, so a missing model fails at start.
    """

    def __init__(self, settings: Any = None):
        from transformers import CLIPModel, CLIPProcessor

        self.settings = settings
        self.text_threshold = float(_setting(settings, "clip_text_threshold"))
        self.image_threshold = float(_setting(settings, "clip_image_threshold"))
        self.image_template = str(_setting(settings, "clip_image_template"))
        self.text_match = str(_setting(settings, "clip_text_match"))
        self.caption_prompt = bool(_setting(settings, "caption_prompt"))
        self.template = str(_setting(settings, "template"))
        self.synonyms = _setting(settings, "synonyms")
        max_tokens = _setting(settings, "caption_max_tokens")
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.device = _device(str(_setting(settings, "filter_device")))
        download = bool(_setting(settings, "filter_download"))
        # candidates from a file need only the captioner
        self.clip = self.clip_processor = None
        if str(_setting(settings, "candidates")) == "clip":
            clip, self.clip_processor = load_pretrained(
                CLIPModel, CLIPProcessor, _setting(settings, "clip_model"), "CLIP model", "method.clip_model", download
            )
            self.clip = clip.to(self.device)
        captioner = str(_setting(settings, "captioner"))
        self.blip = self.blip_processor = None
        if captioner == "blip":
            from transformers import BlipForConditionalGeneration, BlipProcessor

            blip, self.blip_processor = load_pretrained(
                BlipForConditionalGeneration, BlipProcessor, _setting(settings, "captioner_model"),
                "BLIP captioning model", "method.captioner_model", download,
            )
            self.blip = blip.to(self.device)
        elif captioner != "none":
            raise ValueError(f"method.captioner={captioner!r}: expected none or blip")
        # class-name embeddings, per class list (the dataset's list does not change)
        self._name_cache: Dict[Tuple[str, ...], Tuple[List[int], List[str], torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # -- embeddings ---------------------------------------------------------------------------
    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings (N, D)."""
        inputs = self.clip_processor(text=list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        emb = _features(self.clip.get_text_features(**inputs)).float()
        return torch.nn.functional.normalize(emb, dim=-1)

    @torch.inference_mode()
    def image_embedding(self, pixels: np.ndarray) -> torch.Tensor:
        """L2-normalised CLIP image embedding (1, D) of an HWC uint8 image."""
        inputs = self.clip_processor(images=pixels, return_tensors="pt").to(self.device)
        emb = _features(self.clip.get_image_features(**inputs)).float()
        return torch.nn.functional.normalize(emb, dim=-1)

    def _names(self, class_names: Sequence[str]):
        """(classes, prompt names, class of each name, template embeddings, bare-name embeddings)."""
        key = tuple(class_names)
        if key not in self._name_cache:
            from methods.open_vocab import class_prompt_names, fill_template

            bg = background_index(class_names)
            classes = [c for c in range(len(class_names)) if c != bg]
            per_class = class_prompt_names(class_names, self.synonyms)
            names, owner = [], []
            for k, c in enumerate(classes):
                for name in per_class[c]:
                    names.append(name)
                    owner.append(k)
            templated = self.text_embeddings([fill_template(self.image_template, n) for n in names])
            bare = self.text_embeddings(names)
            self._name_cache[key] = (classes, names, torch.tensor(owner, device=self.device), templated, bare)
        return self._name_cache[key]

    @staticmethod
    def _per_class(values: torch.Tensor, owner: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Max over each class's names of a per-name value (N,) -> (K,)."""
        out = torch.full((n_classes,), float("-inf"), device=values.device)
        return out.scatter_reduce_(0, owner, values, reduce="amax")

    # -- the two criteria -------------------------------------------------------------------------
    def image_scores(self, pixels: np.ndarray, class_names: Sequence[str]) -> Tuple[List[int], torch.Tensor]:
        """(classes, CLIP zero-shot probability of each class) for an HWC uint8 image."""
        classes, _, owner, templated, _ = self._names(class_names)
        cosine = (self.image_embedding(pixels) @ templated.T)[0]
        logits = self.clip.logit_scale.exp().float() * self._per_class(cosine, owner, len(classes))
        return classes, logits.softmax(0)

    def text_scores(self, caption: str, class_names: Sequence[str]) -> Tuple[List[int], torch.Tensor]:
        """(classes, best cosine between a caption unit and each class's names)."""
        classes, _, owner, _, bare = self._names(class_names)
        units = caption_phrases(caption) if self.text_match == "phrases" else [caption]
        if not units:
            return classes, torch.full((len(classes),), float("-inf"), device=self.device)
        best_per_name = (self.text_embeddings(units) @ bare.T).amax(0)
        return classes, self._per_class(best_per_name, owner, len(classes))

    @torch.inference_mode()
    def caption(self, pixels: np.ndarray, prefix: Optional[str] = None) -> str:
        """BLIP caption of an HWC uint8 image (conditioned on ``prefix`` when given)."""
        if self.blip is None:
            raise RuntimeError("no captioner loaded (method.captioner=none)")
        inputs = self.blip_processor(images=pixels, text=prefix, return_tensors="pt").to(self.device)
        # None: the checkpoint's generation defaults, as the official model.generate(**inputs)
        limit = {} if self.max_tokens is None else {"max_new_tokens": self.max_tokens}
        out = self.blip.generate(**inputs, **limit)
        return self.blip_processor.decode(out[0], skip_special_tokens=True).strip()

    # -- the filter ------------------------------------------------------------------------------
    def __call__(self, image: torch.Tensor, class_names: Sequence[str]) -> Tuple[List[int], Union[str, Dict[str, str], None]]:
        """(candidate class indices without background, caption) of one uint8 (3, H, W) image.

        caption: None without a captioner; the image caption; or, with
        ``caption_prompt``, {prompt name: caption conditioned on its prompt} of the kept classes.
        """
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"ClipCandidateFilter expects a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
        pixels = image.permute(1, 2, 0).cpu().numpy()
        classes, probs = self.image_scores(pixels, class_names)
        keep = probs >= self.image_threshold
        caption: Union[str, Dict[str, str], None] = None
        if self.blip is not None:
            caption = self.caption(pixels)
            _, similarity = self.text_scores(caption, class_names)
            keep = keep | (similarity >= self.text_threshold)
        candidates = [classes[k] for k in torch.nonzero(keep).flatten().tolist()]
        if self.blip is not None and self.caption_prompt:
            caption = self.prompt_captions(pixels, candidates, class_names)
        return candidates, caption

    def prompt_captions(self, pixels: np.ndarray, candidates: Sequence[int], class_names: Sequence[str]) -> Dict[str, str]:
        """{prompt name: BLIP caption conditioned on "{template} {name}"} for the candidates'
        prompt names (the official per-class captions, ptp_stable_*.py)."""
        from methods.open_vocab import class_prompt_names, fill_template

        per_class = class_prompt_names(class_names, self.synonyms)
        return {
            name: self.caption(pixels, prefix=fill_template(self.template, name))
            for c in candidates
            for name in per_class[c]
        }

    def captions_for(self, image: torch.Tensor, candidates: Sequence[int],
                     class_names: Sequence[str]) -> Union[str, Dict[str, str]]:
        """Captions of given candidates (``candidates=file`` with ``captioner=blip``): the
        per-prompt captions with ``caption_prompt``, else the image's unconditional caption."""
        if self.blip is None:
            raise RuntimeError("no captioner loaded (method.captioner=none)")
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"ClipCandidateFilter expects a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
        pixels = image.permute(1, 2, 0).cpu().numpy()
        if self.caption_prompt:
            return self.prompt_captions(pixels, candidates, class_names)
        return self.caption(pixels)
