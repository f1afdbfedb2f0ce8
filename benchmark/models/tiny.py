"""A tiny Stable-Diffusion-shaped model with random weights, built in code in ~0.1 s.

Same module names and attention layout as SD 1.x/2.x (16 transformer blocks: 5/5/5/1
self-attention layers at latent/1, /2, /4, /8), so every capture code path is the real
one. Its numbers are pipeline checks, never results.

The tokenizer is a byte-level BPE ``CLIPTokenizer`` whose vocabulary is built here: the
two specials, the 256 byte symbols and their end-of-word forms, plus merges that turn
each word of ``TINY_WORDS`` (class names of VOC, COCO, Cityscapes, COCO-Stuff and the
prompt templates' words) into ONE token. Any other word falls back to several byte-level
tokens, e.g. ``MULTI_TOKEN_EXAMPLES`` - which is what tests of multi-token names need.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import torch

_VOC = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow dining table dog horse "
    "motorbike person potted plant sheep sofa train tv monitor"
)
_COCO = (
    "motorcycle airplane truck traffic light fire hydrant stop sign parking meter bench elephant bear "
    "zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard sports ball kite "
    "baseball bat glove skateboard surfboard tennis racket wine glass cup fork knife spoon bowl banana "
    "apple sandwich orange broccoli carrot hot pizza donut cake couch bed toilet laptop mouse remote "
    "keyboard cell phone microwave oven toaster sink refrigerator book clock vase scissors teddy hair "
    "drier toothbrush"
)
_CITYSCAPES = "road sidewalk building wall fence pole vegetation terrain sky rider"
_COCO_STUFF = (
    "electronic appliance food furniture indoor kitchen accessory animal outdoor vehicle ceiling floor "
    "textile window ground solid structure water stuff things"
)
_TEMPLATES = "a an the of photo photograph photography picture image"
#: words that become a single token in the tiny tokenizer
TINY_WORDS: Tuple[str, ...] = tuple(dict.fromkeys(" ".join((_VOC, _COCO, _CITYSCAPES, _COCO_STUFF, _TEMPLATES)).split()))
#: class-name spellings (e.g. VOC's file-list forms) that stay several tokens
MULTI_TOKEN_EXAMPLES: Tuple[str, ...] = ("pottedplant", "tvmonitor", "diningtable")

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_LENGTH = 77
#: bump when the tiny architecture or vocabulary changes (part of the model fingerprint)
TINY_VERSION = "1"


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP byte -> printable-character table (what the ByteLevel pre-tokenizer emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _symbols(word: str, table: Dict[int, str]) -> List[str]:
    chars = [table[b] for b in word.encode("utf-8")]
    return chars[:-1] + [chars[-1] + END_OF_WORD]


def _apply_bpe(symbols: List[str], ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """CLIP's BPE: repeatedly merge the adjacent pair of lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        candidates = [(rank, i) for rank, i in pairs if rank is not None]
        if not candidates:
            break
        best = min(candidates)[0]
        pair = next((symbols[i], symbols[i + 1]) for rank, i in candidates if rank == best)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def plan_merges(words: Iterable[str]) -> List[Tuple[str, str]]:
    """Merges (in rank order) that make every word one token.

    A word may not reach one token through its own left-to-right merges when an earlier
    merge of another word splits it differently; the loop then appends merges of the
    pieces it does reach. Appended merges rank after every existing one, so words already
    whole keep their derivation and the loop ends.
    """
    table = bytes_to_unicode()
    merges: List[Tuple[str, str]] = []
    ranks: Dict[Tuple[str, str], int] = {}
    pending = [w.lower() for w in words]
    while pending:
        for word in pending:
            pieces = _apply_bpe(_symbols(word, table), ranks)
            while len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                if pair not in ranks:
                    ranks[pair] = len(merges)
                    merges.append(pair)
                pieces = [pieces[0] + pieces[1]] + pieces[2:]
        pending = [w for w in pending if len(_apply_bpe(_symbols(w, table), ranks)) != 1]
    return merges


def build_tiny_vocab(words: Sequence[str] = TINY_WORDS) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    table = bytes_to_unicode()
    byte_symbols = [table[b] for b in range(256)]
    tokens = [BOS, EOS] + byte_symbols + [s + END_OF_WORD for s in byte_symbols]
    merges = plan_merges(words)
    tokens += [a + b for a, b in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_tiny_tokenizer(words: Sequence[str] = TINY_WORDS):
    from transformers import CLIPTokenizer

    vocab, merges = build_tiny_vocab(words)
    # transformers 5: vocab_file=/merges_file= are silently ignored; pass the objects
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


def tiny_unet_config() -> dict:
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=2,  # 2 -> the 16 transformer blocks of SD (1 would give 10)
        attention_head_dim=(2, 4, 4, 4),  # number of heads in this UNet class
        cross_attention_dim=32,
        use_linear_projection=True,
        norm_num_groups=32,
    )


def _tiny_vae(sample_size: int, scaling_factor: float = 0.18215):
    """The tiny VAE (SD's 8x factor and 4 latent channels at width 32); ``scaling_factor``
    0.18215 is SD 1.x/2.x's, 0.13025 SDXL's."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def _tiny_scheduler():
    """DDIM with SD's (and SDXL's) training schedule: scaled_linear 0.00085 -> 0.012, 1000
    steps, steps_offset 1."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_components(seed: int = 0) -> dict:
    """unet, vae, text_encoder, tokenizer, scheduler of the tiny SD (random, seeded weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_tiny_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = _tiny_vae(sample_size=512)
        text_encoder = CLIPTextModel(_tiny_text_config(tokenizer))
    finally:  # building the tiny model must not disturb the caller's random stream
        torch.random.set_rng_state(generator_state)
    scheduler = _tiny_scheduler()
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


#: SDXL's layout (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json): no attention
#: in the first down stage, 1 / 2 / 10 transformer blocks per attention below it
SDXL_TRANSFORMER_LAYERS = (1, 2, 10)
#: width of the tiny text encoders (SDXL: 768 for CLIP ViT-L, 1280 for OpenCLIP bigG)
TINY_TEXT_WIDTH = 32
#: SDXL's Fourier width of each add_time_ids entry is 256; the tiny model uses 8
TINY_TIME_EMBED_DIM = 8


def tiny_sdxl_unet_config() -> dict:
    """SDXL's block layout (70 transformer blocks: 4 + 20 down, 10 mid, 36 up) at small width.

    Conditioning as SDXL: cross-attention on the concatenated hidden states of the two
    text encoders (2 x 32), ``addition_embed_type="text_time"`` fed with the pooled
    projection of the second encoder (32) and the six ``add_time_ids`` (6 x 8).
    """
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),  # SDXL: 320, 640, 1280
        layers_per_block=2,
        transformer_layers_per_block=SDXL_TRANSFORMER_LAYERS,
        attention_head_dim=(2, 4, 4),  # number of heads in this UNet class (SDXL: 5, 10, 20)
        cross_attention_dim=2 * TINY_TEXT_WIDTH,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TINY_TIME_EMBED_DIM + TINY_TEXT_WIDTH,
        norm_num_groups=32,
    )


def _tiny_text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_tiny_sdxl_components(seed: int = 0) -> dict:
    """The tiny SDXL (random, seeded weights): unet, vae, text_encoder (CLIPTextModel),
    text_encoder_2 (CLIPTextModelWithProjection), tokenizer, tokenizer_2, scheduler.

    Real diffusers/transformers classes with SDXL's block layout and conditioning
    (``tiny_sdxl_unet_config``); the VAE has SDXL's 8x factor and scaling 0.13025.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = build_tiny_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
        vae = _tiny_vae(sample_size=1024, scaling_factor=0.13025)  # SDXL VAE's scaling factor
        text_encoder = CLIPTextModel(_tiny_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(tokenizer_2, projection_dim=TINY_TEXT_WIDTH))
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = _tiny_scheduler()
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    return dict(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler,
    )


#: model.name -> builder of the random-weight models built in code
TINY_BUILDERS = {"tiny": build_tiny_components, "tiny_sdxl": build_tiny_sdxl_components}


def save_components(components: dict, folder: str | os.PathLike) -> Path:
    """Write components in the diffusers pipeline layout (one subfolder each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        if components.get(name) is not None:
            components[name].save_pretrained(folder / name)
    return folder


def save_tiny(folder: str | os.PathLike, seed: int = 0, name: str = "tiny") -> Path:
    """Save a tiny model (``tiny`` or ``tiny_sdxl``) as a diffusers folder loadable with ``model.path=<folder>``."""
    return save_components(TINY_BUILDERS[name](seed), folder)
