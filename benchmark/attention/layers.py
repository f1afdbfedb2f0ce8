"""Which attention layers of a diffusers UNet a request selects.

Layers are named by their processor key in ``unet.attn_processors``, e.g.
``up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor``: the UNet part
(down/mid/up) and block index come from the name, ``attn1`` is self-attention and
``attn2`` cross-attention. The resolution of a layer is NOT read from the name: it
depends on the latent size and is detected at run time from the number of query tokens.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List

#: values of ``AttentionRequest.self_layers`` / ``cross_layers``
LAYER_SELECTIONS = ("all", "first_up", "down", "up", "mid")
KINDS = {"attn1": "self", "attn2": "cross"}

_NAME = re.compile(
    r"^(?P<part>down_blocks|mid_block|up_blocks)\.(?:(?P<block>\d+)\.)?attentions\.(?P<attention>\d+)\."
    r"transformer_blocks\.(?P<transformer>\d+)\.(?P<attn>attn1|attn2)\.processor$"
)
_PARTS = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}


@dataclass(frozen=True)
class AttentionLayer:
    name: str  #: processor key in ``unet.attn_processors``
    kind: str  #: "self" | "cross"
    part: str  #: "down" | "mid" | "up"
    block: int  #: index of the down/up block (0 for the mid block)
    position: int  #: order of the layer inside its block (attention index, transformer index)


def parse_layer(name: str) -> AttentionLayer | None:
    """The layer described by a processor key, or None for keys outside SD's transformer blocks."""
    m = _NAME.match(name)
    if m is None:
        return None
    position = int(m["attention"]) * 1000 + int(m["transformer"])
    return AttentionLayer(name, KINDS[m["attn"]], _PARTS[m["part"]], int(m["block"] or 0), position)


def list_layers(processor_names: Iterable[str]) -> List[AttentionLayer]:
    return [layer for layer in map(parse_layer, processor_names) if layer is not None]


def check_selection(selection: str, key: str) -> None:
    if selection not in LAYER_SELECTIONS:
        raise ValueError(f"Invalid layer selection {selection!r} for {key}. Valid choices: {', '.join(LAYER_SELECTIONS)}.")


def select_layers(layers: Iterable[AttentionLayer], kind: str, selection: str) -> List[AttentionLayer]:
    """Layers of ``kind`` chosen by ``selection`` (see ``AttentionRequest``).

    "first_up" takes the first layer of every up block: an up block runs at one
    resolution, so this is the first up layer of each resolution (SeeDiff's official code).
    """
    check_selection(selection, f"{kind}-attention layers")
    of_kind = [layer for layer in layers if layer.kind == kind]
    if selection == "all":
        return of_kind
    if selection in ("down", "up", "mid"):
        return [layer for layer in of_kind if layer.part == selection]
    first: dict = {}
    for layer in of_kind:
        if layer.part == "up" and (layer.block not in first or layer.position < first[layer.block].position):
            first[layer.block] = layer
    return [layer for layer in of_kind if first.get(layer.block) is layer]
