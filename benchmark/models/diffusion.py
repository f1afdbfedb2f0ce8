"""``DiffusionModel``: the SD components plus the two ways the harness runs them.

* ``capture``: real images -> VAE latent (posterior mean or seeded sample) -> optional
  seeded noise to ``extract.timestep`` -> ONE batched UNet call for all prompts of all
  images (split into calls of at most ``max_batch`` rows) -> head-/layer-mean attention
  per image.
* ``generate``: SeeDiff's generate mode: DDIM from noise with the prompts (optional
  classifier-free guidance), attention of the conditional branch averaged over all steps,
  plus the decoded images.

Randomness is per image and independent of batching: the generator of an image is seeded
from ``extract.seed`` and the image's key (its id when given, else a SHA-1 of its pixels),
so an image gets the same latent sample and noise alone or in any batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from benchmark.attention.capture import AttentionCapture
from benchmark.attention.features import FeatureCapture
from benchmark.schema import ExtractionConfig
from benchmark.types import AttentionMaps, AttentionRequest, PromptQuery

LATENT_KINDS = ("mean", "sample")


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and stable parts (no Python ``hash``: it is salted per process)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def image_key(image: torch.Tensor) -> str:
    """Content key of a uint8 image (seeds its randomness when no id is given)."""
    data = image.detach().cpu().contiguous()
    return hashlib.sha1(str(tuple(data.shape)).encode() + data.numpy().tobytes()).hexdigest()


def prompt_rows(queries: Sequence[PromptQuery]) -> List[int]:
    """The UNet row (0, 1, ... within one image) of each query of one image: queries whose
    text embedding is the same (same text, and no ``word_weight`` or the same weighted
    word) share a row; a ``word_weight`` changes the embedding at its word's tokens, so a
    weighted query has a row of its own unless an identical one precedes it."""
    row_of: Dict[object, int] = {}
    rows = []
    for q in queries:
        key = q.text if float(q.word_weight) == 1.0 else (q.text, q.word, q.weight_word, float(q.word_weight))
        rows.append(row_of.setdefault(key, len(row_of)))
    return rows


def _randn(shape: Sequence[int], seed: int) -> torch.Tensor:
    # drawn on the CPU so that every device gets the same numbers
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(seed))


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # cast only when needed: diffusers warns about every .to(dtype) of a loaded model
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.to(device).eval().requires_grad_(False)


def _own(maps: torch.Tensor, part: Sequence[int], dim: int = 0) -> torch.Tensor:
    """Entries ``part`` (indices) of ``maps`` along ``dim`` in their own storage (a view would
    keep the whole batch buffer alive), without a copy when they are the whole buffer in
    order (one image per call and one row per query: the usual case)."""
    if list(part) == list(range(maps.shape[dim])):
        return maps
    return maps.index_select(dim, torch.as_tensor(list(part), dtype=torch.long, device=maps.device))


def attention_sides(unet_config, latent_side: int) -> List[int]:
    """Sides of the attention grids of a UNet (its diffusers config) for a ``latent_side`` latent, largest first.

    A down/up block whose type has cross-attention (``CrossAttn*``) runs at
    ``latent_side / 2**level``, the mid block at the lowest level. SD 1.x/2.x: 64/32/16/8
    at 512 px; SDXL family: 64/32 at 1024 px (no attention in the first down stage).
    """
    levels = len(unet_config["block_out_channels"])
    found = {latent_side >> i for i, kind in enumerate(unet_config["down_block_types"]) if "CrossAttn" in kind}
    found |= {latent_side >> (levels - 1 - j) for j, kind in enumerate(unet_config["up_block_types"]) if "CrossAttn" in kind}
    mid = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")  # diffusers' default when absent
    if mid and "CrossAttn" in str(mid):
        found.add(latent_side >> (levels - 1))
    return sorted((s for s in found if s >= 1), reverse=True)


def fit_request(unet_config, request: AttentionRequest, latent_side: int, vae_factor: int, model_id: str) -> AttentionRequest:
    """``request`` restricted to the sides where the UNet has attention layers.

    Methods ask for the SD sides of their image size and read the sides that were
    captured (``AttentionMaps.self_attn`` keys): a side of the UNet's grid levels where
    this UNet has no attention (SDXL's first stage) is left out, except the latent side
    itself (an SD UNet's finest grid, e.g. DiffSegmenter's SA64), which is served by the
    finest attention grid the UNet has (latent / 2 for the SDXL family). A side that is no
    grid level of this latent, or a kind whose requested sides all lack attention, fails
    here, naming the sides the model has.
    """
    # latent / 2**i: the grids a UNet of any depth could have (SD: 4 levels, SDXL: 3)
    levels = {latent_side >> i for i in range(latent_side.bit_length())}
    available = set(attention_sides(unet_config, latent_side))
    fitted = {}
    for kind, sides in (("self", request.self_resolutions), ("cross", request.cross_resolutions)):
        impossible = sorted(set(sides) - levels, reverse=True)
        if latent_side in sides and latent_side not in available and available:
            finest = max(available)
            sides = tuple(dict.fromkeys(finest if s == latent_side else s for s in sides))
        kept = tuple(s for s in sides if s in available)
        if impossible or (sides and not kept):
            raise ValueError(
                f"{kind}-attention resolution(s) {impossible or sorted(sides, reverse=True)} requested, but model "
                f"{model_id!r} with a {latent_side}x{latent_side} latent (image_size {latent_side * vae_factor}) "
                f"has attention at {sorted(available, reverse=True)}"
            )
        fitted[kind] = kept
    return dataclasses.replace(request, self_resolutions=fitted["self"], cross_resolutions=fitted["cross"])
def check_explicit_sides(unet_config, latent_side: int, explicit: Sequence[Any], vae_factor: int, model_id: str) -> None:
    """ValueError (a user error) when a side the user named (``ExplicitSides``: key, kind,
    sides) is not one of this UNet's attention grids at ``latent_side``. ``fit_request``
    fits the sides a method derives from the input size to the model; sides given
    explicitly are refused instead, naming the key, the sides asked for and those the model
    has, before any image is read."""
    available = attention_sides(unet_config, latent_side)
    for entry in explicit:
        missing = [s for s in entry.sides if s not in available]
        if missing:
            err = ValueError(
                f"{entry.key}: {entry.kind}-attention side(s) {list(entry.sides)} requested, but model {model_id!r} "
                f"has no attention at {missing} with a {latent_side}x{latent_side} latent (method.extract.image_size="
                f"{latent_side * vae_factor}); its attention sides there: {available}. Set {entry.key} to sides "
                "it has, or null to follow the model"
            )
            err.user_error = True
            raise err


def _is_whole_words(text: str, first: int, last: int) -> bool:
    """Whether ``text[first:last]`` starts and ends at word boundaries (no letter or digit
    right before or right after it)."""
    before = text[first - 1] if first > 0 else " "
    after = text[last] if last < len(text) else " "
    return not before.isalnum() and not after.isalnum()


def _enclosing_word(text: str, first: int, last: int) -> str:
    """The whole word(s) of ``text`` that contain ``text[first:last]``, for messages."""
    while first > 0 and text[first - 1].isalnum():
        first -= 1
    while last < len(text) and text[last].isalnum():
        last += 1
    return text[first:last]


class DiffusionModel:
    """SD components on one device, with counters of the UNet work done.

    unet_calls: UNet forward calls; unet_rows: UNet batch rows evaluated (one row = one
    prompt at one step = what papers call one diffusion pass).
    """

    def __init__(
        self,
        unet,
        vae,
        text_encoder,
        tokenizer,
        scheduler,
        device: torch.device | str,
        dtype: torch.dtype,
        model_id: str,
        fingerprint: str,
        chunk_size: Optional[int] = None,
        max_batch: int = 16,
        text_encoder_2=None,
        tokenizer_2=None,
    ):
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet, self.vae, self.text_encoder = (_place(m, self.device, dtype) for m in (unet, vae, text_encoder))
        # SDXL family: a second (projection) text encoder; its pooled output and the
        # add_time_ids condition the UNet through ``added_cond_kwargs``
        if (text_encoder_2 is None) != (tokenizer_2 is None):
            raise ValueError("text_encoder_2 and tokenizer_2 come together (SDXL-family models have both)")
        self.text_encoder_2 = None if text_encoder_2 is None else _place(text_encoder_2, self.device, dtype)
        self.tokenizer_2 = tokenizer_2
        self._pooled: dict = {}  # text -> pooled embedding of text_encoder_2 (filled by encode_prompts)
        if self.uses_text_time and self.text_encoder_2 is None:
            raise ValueError(
                "the UNet is conditioned on pooled text embeddings and add_time_ids (addition_embed_type='text_time', "
                "SDXL family) but the model has no text_encoder_2/tokenizer_2"
            )
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.chunk_size = None if chunk_size is None else int(chunk_size)  # None: per device (capture.py)
        self.max_batch = int(max_batch)
        self.unet_calls = 0
        self.unet_rows = 0
        self.max_length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        #: image sides must be multiples of this (VAE factor x UNet downsampling)
        self.size_multiple = self.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)

    @property
    def uses_text_time(self) -> bool:
        """SDXL-style conditioning: pooled text embeddings + ``add_time_ids``."""
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    def __repr__(self) -> str:
        return f"DiffusionModel({self.model_id!r}, device={self.device}, dtype={self.dtype}, fingerprint={self.fingerprint!r})"

    # -- text ---------------------------------------------------------------------------
    def token_ids(self, text: str) -> List[int]:
        """The ``max_length`` (77) token ids of ``text``: BOS, tokens, EOS, padding."""
        return self.tokenizer(text, padding="max_length", max_length=self.max_length, truncation=True).input_ids

    def token_positions(self, text: str, word: str) -> List[int]:
        """Indices (in the 77-token sequence of ``text``) of the sub-tokens of ``word`` where
        it stands as whole words: first such occurrence.

        A token sequence equal to ``word``'s is an occurrence only when it covers whole words of
        ``text``: the characters just before and after it (from the tokenizer's offsets) are not
        letters or digits. With CLIP's BPE, "boat" in "a fireboat next to a boat" is position 7
        (the tail ``boat</w>`` of "fireboat", position 3, is not the word), and "table" does not
        occur in "a diningtable". Raises ValueError naming the prompt, the word and its tokens
        when there is no whole-word occurrence (and where it occurs inside other words).
        """
        if not word:
            raise ValueError(f"empty word for prompt {text!r}")
        enc = self.tokenizer(text, max_length=self.max_length, truncation=True, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        word_ids = self.tokenizer(word, add_special_tokens=False).input_ids
        n = len(word_ids)
        inside = []
        for start in range(1, len(ids) - n + 1):
            if ids[start : start + n] != word_ids:
                continue
            first, last = int(offsets[start][0]), int(offsets[start + n - 1][1])
            if _is_whole_words(text, first, last):
                return list(range(start, start + n))
            inside.append(_enclosing_word(text, first, last))
        where = f"; it occurs only inside {', '.join(repr(w) for w in inside)}" if inside else ""
        raise ValueError(
            f"word {word!r} (tokens {word_ids}) not found in the {self.max_length}-token sequence of prompt {text!r} "
            f"as whole words (tokens {ids}){where}; the word must appear in the prompt as whole words and within "
            "the first tokens"
        )

    def encode_prompts(self, texts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states (len(texts), 77, D); each distinct text encoded once.

        SD 1.x/2.x: the last hidden state of the one encoder. SDXL family: the penultimate
        hidden states of both encoders concatenated on the feature axis (D = D1 + D2), the
        pooled projection of the second kept for ``pooled_prompts`` (diffusers
        ``StableDiffusionXLPipeline.encode_prompt`` with clip_skip=None).
        """
        distinct = list(dict.fromkeys(texts))
        ids = torch.tensor([self.token_ids(t) for t in distinct], device=self.device)
        if self.text_encoder_2 is None:
            hidden = self.text_encoder(ids)[0]
        else:
            ids_2 = torch.tensor(
                [self.tokenizer_2(t, padding="max_length", max_length=self.max_length, truncation=True).input_ids for t in distinct],
                device=self.device,
            )
            first = self.text_encoder(ids, output_hidden_states=True)
            second = self.text_encoder_2(ids_2, output_hidden_states=True)
            hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
            if len(self._pooled) > 4096:  # a bounded memo: prompts of one batch are what is needed
                self._pooled.clear()
            for t, pooled in zip(distinct, second[0]):
                self._pooled[t] = pooled
        where = {t: i for i, t in enumerate(distinct)}
        return hidden[torch.tensor([where[t] for t in texts], device=self.device)]

    def pooled_prompts(self, texts: Sequence[str]) -> Optional[torch.Tensor]:
        """(len(texts), D2) pooled embeddings of the second text encoder (None for SD 1.x/2.x)."""
        if self.text_encoder_2 is None:
            return None
        missing = [t for t in dict.fromkeys(texts) if t not in self._pooled]
        if missing:
            self.encode_prompts(missing)
        return torch.stack([self._pooled[t] for t in texts])

    def add_time_ids(self, image_size: int, rows: int) -> torch.Tensor:
        """(rows, 6) SDXL micro-conditioning: original size, crop top-left (0, 0), target size,
        all at ``image_size`` (DiffCut tools/ldm.py get_text_embeds: ``_get_add_time_ids((s, s), (0, 0), (s, s))``)."""
        ids = torch.tensor([image_size, image_size, 0, 0, image_size, image_size], dtype=self.dtype, device=self.device)
        return ids.expand(rows, 6)

    def encode_queries(self, queries: Sequence[PromptQuery]) -> torch.Tensor:
        """Hidden states of the queries' texts with each ``word_weight`` applied (Compel's
        ``word++``): z' = z_empty + w * (z - z_empty) at the word's token positions."""
        hidden = self.encode_prompts([q.text for q in queries])
        weighted = [(i, q) for i, q in enumerate(queries) if float(q.word_weight) != 1.0]
        if weighted:
            empty = self.encode_prompts([""])[0]
            for i, q in weighted:
                if not q.word:
                    raise ValueError(f"prompt {q.text!r}: word_weight={q.word_weight} needs the word to weight")
                pos = self.token_positions(q.text, q.word)
                if getattr(q, "weight_word", None):  # only the trailing word(s) of q.word: "traffic light++"
                    if not q.word.endswith(q.weight_word):
                        raise ValueError(f"prompt {q.text!r}: weight_word {q.weight_word!r} is not the end of word {q.word!r}")
                    pos = pos[-len(self.tokenizer(q.weight_word, add_special_tokens=False).input_ids):]
                pos = torch.tensor(pos, device=hidden.device)
                hidden[i, pos] = empty[pos] + float(q.word_weight) * (hidden[i, pos] - empty[pos])
        return hidden

    # -- images ---------------------------------------------------------------------------
    def check_image_size(self, size: int) -> int:
        if size < self.size_multiple or size % self.size_multiple:
            raise ValueError(
                f"extract.image_size={size}: must be a positive multiple of {self.size_multiple} for this model "
                f"(VAE factor {self.vae_scale_factor} x UNet downsampling)"
            )
        return size // self.vae_scale_factor

    def attention_sides(self, latent_side: int) -> List[int]:
        """Sides of this UNet's attention grids for a ``latent_side`` latent (``attention_sides``)."""
        return attention_sides(self.unet.config, latent_side)

    def fit_request(self, request: AttentionRequest, latent_side: int) -> AttentionRequest:
        """``request`` restricted to this UNet's attention grids (``fit_request``)."""
        return fit_request(self.unet.config, request, latent_side, self.vae_scale_factor, self.model_id)

    def check_resolutions(self, request: AttentionRequest, latent_side: int) -> None:
        """Fail before the pass when no requested resolution of a kind exists for this model and latent size."""
        self.fit_request(request, latent_side)

    def encode_images(self, images: Sequence[torch.Tensor], extract: ExtractionConfig, keys: Sequence[str]) -> torch.Tensor:
        """Scaled VAE latents (N, 4, s/8, s/8) of images resized bilinearly (no aspect kept) to image_size."""
        size = extract.image_size
        latents = []
        for start in range(0, len(images), self.max_batch):
            batch = []
            for image in images[start : start + self.max_batch]:
                pixels = image.to(self.device).float()[None]
                if tuple(pixels.shape[-2:]) != (size, size):
                    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
                batch.append(pixels[0])
            pixels = (torch.stack(batch) / 127.5 - 1.0).to(self.dtype)
            posterior = self.vae.encode(pixels).latent_dist
            z = posterior.mean
            if extract.latent == "sample":
                eps = torch.stack(
                    [_randn(z.shape[1:], derive_seed(extract.seed, "latent", k)) for k in keys[start : start + self.max_batch]]
                )
                z = posterior.mean + posterior.std * eps.to(self.device, z.dtype)
            latents.append(z * self.vae.config.scaling_factor)
        return torch.cat(latents)

    def decode_latents(self, latents: torch.Tensor, to_uint8: str = "round") -> List[torch.Tensor]:
        """uint8 (3, H, W) images of scaled latents.

        to_uint8: round (to nearest) | truncate (prompt-to-prompt's ``latent2image``, which
        SeeDiff's src/ptp_utils.py uses: ``((x / 2 + 0.5).clamp(0, 1) * 255).astype(np.uint8)``).
        """
        if to_uint8 not in ("round", "truncate"):
            raise ValueError(f"to_uint8={to_uint8!r}: expected round or truncate")
        images = []
        for start in range(0, latents.shape[0], self.max_batch):
            z = latents[start : start + self.max_batch] / self.vae.config.scaling_factor
            x = self.vae.decode(z.to(self.dtype)).sample.float()
            if to_uint8 == "truncate":
                pixels = (x / 2 + 0.5).clamp(0, 1) * 255
            else:
                pixels = ((x.clamp(-1, 1) + 1) * 127.5).round()
            images.extend(pixels.to(torch.uint8).cpu().unbind(0))
        return images

    # -- UNet ---------------------------------------------------------------------------
    def _unet(
        self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor, texts: Optional[Sequence[str]] = None
    ) -> torch.Tensor:
        """One UNet call; ``texts`` (the prompt of every row) supply the pooled embeddings of
        SDXL-family models, whose ``add_time_ids`` use the input size ``latent side x VAE factor``."""
        self.unet_calls += 1
        self.unet_rows += latents.shape[0]
        extra = {}
        if self.uses_text_time:
            if texts is None or len(texts) != latents.shape[0]:
                raise ValueError("an SDXL-family UNet call needs the prompt text of every batch row")
            size = int(latents.shape[-1]) * self.vae_scale_factor
            extra["added_cond_kwargs"] = {
                "text_embeds": self.pooled_prompts(texts).to(self.dtype),
                "time_ids": self.add_time_ids(size, latents.shape[0]),
            }
        return self.unet(latents.to(self.dtype), timesteps, encoder_hidden_states=embeddings, **extra).sample

    @staticmethod
    def passes_per_image(n_prompts: int, extract: ExtractionConfig) -> int:
        """UNet rows one image costs: prompts x steps, x2 for guidance in generate mode.

        A single pass on a real image never runs the unconditional branch: its output is
        not used and batch rows do not interact, so it cannot change the captured
        conditional attention.
        """
        cfg = 2 if extract.steps > 1 and float(extract.guidance_scale) != 1.0 else 1
        return int(n_prompts) * int(extract.steps) * cfg

    def _check_common(self, request: AttentionRequest, extract: ExtractionConfig) -> None:
        if extract.latent not in LATENT_KINDS:
            raise ValueError(f"extract.latent={extract.latent!r}: expected one of {', '.join(LATENT_KINDS)}")
        if extract.steps < 1:
            raise ValueError(f"extract.steps={extract.steps}: must be >= 1")
        if not isinstance(request, AttentionRequest):
            raise TypeError(f"request must be an AttentionRequest, got {type(request).__name__}")

    def _positions(self, queries: Sequence[PromptQuery]) -> List[List[int]]:
        return [self.token_positions(q.text, q.word) if q.word else [] for q in queries]

    @torch.no_grad()  # not inference_mode: results must stay ordinary tensors (in-place ops later)
    def capture(
        self,
        images: Sequence[torch.Tensor],
        queries: Sequence[Sequence[PromptQuery]],
        request: AttentionRequest,
        extract: ExtractionConfig,
        image_ids: Optional[Sequence[str]] = None,
        timesteps: Optional[Sequence[int]] = None,
    ) -> List[AttentionMaps]:
        """Attention of each image (one ``AttentionMaps`` per image) from one batched UNet pass.

        images: uint8 (3, H, W) tensors, or float32 ones in [0, 255] (an unrounded resize,
        ``Sample.vae_image``); queries[i]: the prompts of image i (at least one);
        Queries of one image with the same text share one UNet row (their maps are equal
        copies; the token positions still differ), so a caption read at several nouns
        costs one row (``prompt_rows``: a ``word_weight`` != 1 gives its query its own row).
        image_ids: keys seeding each image's randomness (default: hash of its pixels);
        timesteps: per-image timestep overriding ``extract.timestep`` (several timesteps
        in one pass).
        """
        self._check_common(request, extract)
        if extract.steps != 1:
            raise ValueError(f"extract.steps={extract.steps} is generation mode: use DiffusionModel.generate()")
        n = len(images)
        if len(queries) != n:
            raise ValueError(f"capture got {n} images but {len(queries)} query lists")
        for i, (image, qs) in enumerate(zip(images, queries)):
            if image.dtype not in (torch.uint8, torch.float32) or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"image {i}: expected a uint8 or float32 (3, H, W) tensor, got {image.dtype} {tuple(image.shape)}"
                )
            if not qs:
                raise ValueError(f"image {i}: no prompt queries (use [PromptQuery('')] for the empty prompt)")
        keys = list(image_ids) if image_ids is not None else [image_key(im) for im in images]
        steps = [extract.timestep] * n if timesteps is None else [int(t) for t in timesteps]
        if len(keys) != n or len(steps) != n:
            raise ValueError(f"capture got {n} images but {len(keys)} image ids and {len(steps)} timesteps")
        n_train = int(self.scheduler.config.num_train_timesteps)
        bad = [t for t in steps if not 0 <= t < n_train]
        if bad:
            raise ValueError(f"timestep(s) {bad} outside [0, {n_train}) of the scheduler")
        request = self.fit_request(request, self.check_image_size(extract.image_size))
        positions = [self._positions(qs) for qs in queries]
        if request.empty:
            return [AttentionMaps({}, {}, list(qs), pos) for qs, pos in zip(queries, positions)]

        latents = self.encode_images(images, extract, keys)
        t = torch.tensor(steps, dtype=torch.long, device=self.device)
        if extract.noise:
            noise = torch.stack([_randn(latents.shape[1:], derive_seed(extract.seed, "noise", k)) for k in keys])
            latents = self.scheduler.add_noise(latents.float(), noise.to(self.device), t)

        # one UNet row per distinct prompt of an image (``prompt_rows``): queries sharing a text (one
        # caption read at several nouns, as Semantic DiffSeg does) share the row, whose
        # latent, timestep and text embedding are the same (the official get_semantics runs
        # the caption once); an image's shared self-attention is the mean over its distinct
        # prompts, each once; query_rows[i][j]: the row of query j of image i
        flat: List[PromptQuery] = []
        image_rows: List[int] = []
        query_rows: List[List[int]] = []
        for i, qs in enumerate(queries):
            local = prompt_rows(qs)
            first = len(flat)
            for j, q in enumerate(qs):
                if local[j] == len(flat) - first:  # the first query of a new row
                    flat.append(q)
                    image_rows.append(i)
            query_rows.append([first + r for r in local])
        image_of_row = torch.tensor(image_rows, dtype=torch.long)
        row_index = torch.arange(len(flat))
        self_groups = row_index if extract.self_attn_per_prompt else image_of_row
        embeddings = self.encode_queries(flat)
        n_self_groups = int(self_groups.max()) + 1
        # block outputs are hooked in the same pass, grouped like self-attention
        with AttentionCapture(
            self.unet, request, self_groups, self.chunk_size, cross_groups=row_index,
            n_groups=n_self_groups, n_cross_groups=int(row_index.numel()),
        ) as capture, FeatureCapture(self.unet, request.features, self_groups[:0], n_self_groups) as features:
            for start in range(0, int(row_index.numel()), self.max_batch):
                rows = slice(start, start + self.max_batch)
                capture.set_groups(self_groups[rows], row_index[rows])
                features.set_groups(self_groups[rows])
                images_of_rows = image_of_row[rows].to(self.device)
                self._unet(latents[images_of_rows], t[images_of_rows], embeddings[rows], [q.text for q in flat[rows]])
        self_maps, cross_maps = capture.self_attention(), capture.cross_attention()
        layer_maps = capture.cross_attention_layers()
        feature_maps = features.result()

        out = []
        for i, qs in enumerate(queries):
            prompts = query_rows[i]
            groups = prompts if extract.self_attn_per_prompt else [i]
            out.append(
                AttentionMaps(
                    {r: _own(a, groups) for r, a in self_maps.items()},
                    {r: _own(a, prompts) for r, a in cross_maps.items()},
                    list(qs),
                    positions[i],
                    {r: _own(a, prompts, dim=1) for r, a in layer_maps.items()},
                    {n: _own(f, groups) for n, f in feature_maps.items()},
                )
            )
        return out

    @torch.no_grad()  # not inference_mode: results must stay ordinary tensors (in-place ops later)
    def generate(
        self,
        queries: Sequence[PromptQuery],
        request: AttentionRequest,
        extract: ExtractionConfig,
        seed: Optional[int] = None,
        scheduler_name: str = "ddim",
        to_uint8: str = "round",
    ) -> Tuple[List[torch.Tensor], List[AttentionMaps]]:
        """One image per query, generated from noise (``extract.steps``,
        ``extract.guidance_scale``); attention of the conditional branch averaged over all
        UNet calls.

        scheduler_name: ddim | pndm (diffusers' PNDMScheduler with ``skip_prk_steps``, the
        default scheduler of SD v1.x pipelines that SeeDiff's code runs: ``steps`` + 1 UNet
        calls, 51 for 50 steps); both take the model's noise schedule (betas, offset).
        to_uint8: see :meth:`decode_latents`.
        The initial noise of query i is seeded from (seed or extract.seed, i).
        Returns (uint8 (3, S, S) images, one AttentionMaps per image with G = P = 1).
        """
        from diffusers import DDIMScheduler, PNDMScheduler

        if scheduler_name not in ("ddim", "pndm"):
            raise ValueError(f"scheduler={scheduler_name!r}: expected ddim or pndm")
        self._check_common(request, extract)
        side = self.check_image_size(extract.image_size)
        request = self.fit_request(request, side)
        if request.features:
            raise ValueError(
                f"features {list(request.features)} requested in generate mode: block outputs are captured by the "
                "single pass on a real image (DiffusionModel.capture)"
            )
        seed = extract.seed if seed is None else int(seed)
        guided = float(extract.guidance_scale) != 1.0
        per_call = max(1, self.max_batch // (2 if guided else 1))
        if scheduler_name == "pndm":
            scheduler = PNDMScheduler.from_config(self.scheduler.config, skip_prk_steps=True)
        else:
            scheduler = DDIMScheduler.from_config(self.scheduler.config)
        channels = int(self.unet.config.in_channels)
        images: List[torch.Tensor] = []
        maps: List[AttentionMaps] = []
        for start in range(0, len(queries), per_call):
            chunk = list(queries[start : start + per_call])
            b = len(chunk)
            latents = torch.stack([_randn((channels, side, side), derive_seed(seed, "generate", start + i)) for i in range(b)])
            latents = latents.to(self.device) * scheduler.init_noise_sigma
            embeddings = self.encode_queries(chunk)
            texts = [q.text for q in chunk]
            groups = torch.arange(b)
            if guided:  # unconditional rows first, not captured
                embeddings = torch.cat([self.encode_prompts([""] * b), embeddings])
                texts = [""] * b + texts
                groups = torch.cat([torch.full((b,), -1), groups])
            scheduler.set_timesteps(extract.steps, device=self.device)
            with AttentionCapture(self.unet, request, groups, self.chunk_size, cross_groups=groups) as capture:
                for t in scheduler.timesteps:
                    model_in = torch.cat([latents, latents]) if guided else latents
                    model_in = scheduler.scale_model_input(model_in, t)
                    eps = self._unet(model_in, t.expand(model_in.shape[0]), embeddings, texts).float()
                    if guided:
                        eps_uncond, eps_cond = eps.chunk(2)
                        eps = eps_uncond + extract.guidance_scale * (eps_cond - eps_uncond)
                    latents = scheduler.step(eps, t, latents).prev_sample
            self_maps, cross_maps = capture.self_attention(), capture.cross_attention()
            layer_maps = capture.cross_attention_layers()
            images.extend(self.decode_latents(latents, to_uint8))
            for i, q in enumerate(chunk):
                maps.append(
                    AttentionMaps(
                        {r: _own(a, [i]) for r, a in self_maps.items()},
                        {r: _own(a, [i]) for r, a in cross_maps.items()},
                        [q],
                        self._positions([q]),
                        {r: a[:, i : i + 1].clone() for r, a in layer_maps.items()},
                    )
                )
        return images, maps
