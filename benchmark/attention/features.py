"""Capture of block outputs (features) during the same UNet pass as the attention.

``FeatureCapture`` registers forward hooks on named UNet modules for one ``with`` scope
and adds each module's output, per group of batch rows, into ONE float32 buffer per
feature (same row -> group maps as ``AttentionCapture``; -1 = not captured). After the
pass, ``result()`` is the group mean: {name: (G, N, C)} with N the module's tokens
(side² for a transformer block) and C its channels. No second pass, no per-layer copies.

Feature names are either a module path of ``unet.named_modules()`` (e.g.
``down_blocks.2.attentions.1.transformer_blocks.9.attn1``) or an alias resolved per
model from its block layout:

``last_down_attn1``
    the self-attention (``attn1``) of the last transformer block of the last attention of
    the deepest down stage that has attention: DiffCut's features (PaulCouairon/DiffCut
    tools/ldm.py ``register_hooks``: ``down_blocks[-1]...attn1`` for SDXL-family models,
    ``down_blocks[-2]...attn1`` for SD 1.4, i.e. the deepest down stage with attention in
    both). Its output is the attention output after ``to_out`` and before the residual
    add of ``BasicTransformerBlock``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

#: alias -> description (``benchmark.attention.features`` module doc)
FEATURE_ALIASES = {"last_down_attn1": "self-attention output of the last transformer block of the deepest down stage with attention"}


def resolve_feature(unet, name: str) -> Tuple[str, torch.nn.Module]:
    """(module path, module) of feature ``name`` in ``unet``; ValueError naming what exists."""
    if name == "last_down_attn1":
        stages = [i for i, block in enumerate(unet.down_blocks) if getattr(block, "attentions", None)]
        if not stages:
            raise ValueError(f"feature {name!r}: this UNet has no down stage with attention")
        stage = stages[-1]
        attention = len(unet.down_blocks[stage].attentions) - 1
        block = len(unet.down_blocks[stage].attentions[attention].transformer_blocks) - 1
        path = f"down_blocks.{stage}.attentions.{attention}.transformer_blocks.{block}.attn1"
        return path, unet.get_submodule(path)
    modules = dict(unet.named_modules())
    if name not in modules or not name:
        attn = [n for n in modules if n.endswith(".attn1")]
        raise ValueError(
            f"feature {name!r} is neither an alias ({', '.join(FEATURE_ALIASES)}) nor a module of this UNet; "
            f"module paths look like {attn[-1] if attn else 'down_blocks.0.resnets.0'!r}"
        )
    return name, modules[name]


class FeatureCapture:
    """Group-mean outputs of the named modules over one or more UNet calls (see module doc).

    names: feature names (aliases or module paths); groups: group of every row of the next
    call (-1 = not captured); n_groups: number of groups over all calls.
    """

    def __init__(self, unet, names: Sequence[str], groups: Sequence[int] | torch.Tensor, n_groups: int):
        self.unet = unet
        self.names = list(dict.fromkeys(names))
        self.modules = {name: resolve_feature(unet, name) for name in self.names}
        self.n_groups = int(n_groups)
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts = torch.zeros(self.n_groups, dtype=torch.float64)
        self._handles: List = []
        self.set_groups(groups)

    @property
    def paths(self) -> Dict[str, str]:
        """feature name -> module path it was read from."""
        return {name: path for name, (path, _) in self.modules.items()}

    def set_groups(self, groups: Sequence[int] | torch.Tensor) -> None:
        groups = torch.as_tensor(groups, dtype=torch.long).flatten()
        if groups.numel() and (int(groups.max()) >= self.n_groups or int(groups.min()) < -1):
            raise ValueError(f"feature capture groups {groups.tolist()} outside [-1, {self.n_groups})")
        self.groups = groups
        captured = groups >= 0
        self.rows = captured.nonzero().flatten()
        self.row_groups = groups[captured]
        self.counts.index_add_(0, self.row_groups, torch.ones(self.row_groups.numel(), dtype=torch.float64))

    def _hook(self, name: str):
        def add(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if out.ndim == 4:  # (B, C, H, W) block outputs -> tokens (B, H*W, C)
                out = out.flatten(2).transpose(1, 2)
            if out.shape[0] != self.groups.numel():
                raise RuntimeError(
                    f"feature capture groups describe {self.groups.numel()} rows but {name} got a batch of {out.shape[0]}: "
                    "call set_groups() before each UNet call"
                )
            if name not in self.sums:
                with torch.inference_mode(False):
                    self.sums[name] = torch.zeros(self.n_groups, *out.shape[1:], dtype=torch.float32, device=out.device)
            rows = self.rows.to(out.device)
            self.sums[name].index_add_(0, self.row_groups.to(out.device), out.index_select(0, rows).float())

        return add

    def __enter__(self) -> "FeatureCapture":
        for name, (_, module) in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    def result(self) -> Dict[str, torch.Tensor]:
        """{name: float32 (G, N, C)} group means of the captured outputs."""
        if not self.names:
            return {}
        missing = [n for n in self.names if n not in self.sums]
        if missing:
            raise ValueError(f"feature(s) {missing} were not computed in the UNet pass (their module never ran)")
        if bool((self.counts == 0).any()):
            raise ValueError(f"feature groups {(self.counts == 0).nonzero().flatten().tolist()} received no rows")
        return {n: self.sums[n] / self.counts.to(self.sums[n].device, torch.float32).view(-1, 1, 1) for n in self.names}
