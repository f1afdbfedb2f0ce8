"""DiffusionModel.token_positions finds words as whole words, with the real CLIP BPE (issue 14.9)."""
from __future__ import annotations

import functools
import gzip
import types
from pathlib import Path

import pytest

CLIP_BPE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "clip" / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="module")
def clip_tokenizer():
    """Stable Diffusion 1.x's tokenizer, built from OpenAI CLIP's BPE file.

    Vocabulary order as in CLIP's ``SimpleTokenizer`` (clip/simple_tokenizer.py): the 256
    byte symbols, the same with ``</w>``, one entry per merge of lines 1..48894 of the
    file, then <|startoftext|> (49406) and <|endoftext|> (49407).
    """
    if not CLIP_BPE.is_file():
        pytest.skip(f"the real CLIP BPE vocabulary is not at {CLIP_BPE} (shared/reference is absent)")
    from transformers import CLIPTokenizer

    from benchmark.models.tiny import BOS, END_OF_WORD, EOS, bytes_to_unicode

    lines = gzip.open(CLIP_BPE, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    # transformers 5 ignores vocab_file=/merges_file=: pass the objects
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=77)
    # the ids SD's tokenizer gives (openai/clip-vit-large-patch14): "a" 320, "boat" 4440
    assert tok("a boat").input_ids == [49406, 320, 4440, 49407]
    return tok


@pytest.fixture()
def sd_text(clip_tokenizer):
    """DiffusionModel's text side with SD's tokenizer: token_positions reads only ``tokenizer``
    and ``max_length``, so no UNet / VAE / text encoder is built."""
    from benchmark.models.diffusion import DiffusionModel

    text_side = types.SimpleNamespace(tokenizer=clip_tokenizer, max_length=77)
    text_side.token_positions = functools.partial(DiffusionModel.token_positions, text_side)
    return text_side


def test_a_word_is_not_found_in_the_tail_of_a_compound(sd_text, clip_tokenizer):
    text = "a fireboat next to a boat"
    ids = clip_tokenizer(text).input_ids
    assert clip_tokenizer.convert_ids_to_tokens(ids[2:4]) == ["fire", "boat</w>"]  # "boat</w>" ends "fireboat"
    assert ids[3] == ids[7]
    assert sd_text.token_positions(text, "boat") == [7]
    assert sd_text.token_positions(text, "fireboat") == [2, 3]


def test_diningtable_is_not_table(sd_text, clip_tokenizer):
    assert clip_tokenizer.convert_ids_to_tokens(clip_tokenizer("diningtable").input_ids[1:-1]) == ["din", "ing", "table</w>"]
    assert sd_text.token_positions("a diningtable and a table", "table") == [7]
    assert sd_text.token_positions("a photo of a diningtable", "diningtable") == [5, 6, 7]
    with pytest.raises(ValueError, match=r"'table'.*not found in the 77-token.*'a photo of a diningtable' as whole words.*only inside 'diningtable'"):
        sd_text.token_positions("a photo of a diningtable", "table")


def test_multi_word_names_and_punctuation_are_word_boundaries(sd_text):
    assert sd_text.token_positions("a photo of a dining table", "dining table") == [5, 6]
    assert sd_text.token_positions("a photo of a tv-monitor.", "monitor") == [7]
    assert sd_text.token_positions("A Boat, a boat", "boat") == [2]  # CLIP lower-cases; offsets are of the text
    with pytest.raises(ValueError, match="not found in the 77-token.*as whole words"):
        sd_text.token_positions("two boathouse", "boat")
