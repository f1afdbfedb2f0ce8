"""Streaming capture of attention probabilities during one UNet forward pass.

``AttentionCapture`` is a context manager that swaps the processors of the requested
attention layers (and only those: every other layer keeps its fused SDPA processor) for
``CapturingAttnProcessor`` and restores the original processors on exit, also on error.

A capturing layer computes, per query chunk, ``P = softmax(Q Kᵀ · scale)`` in float32
(q scaled once before the product; PyTorch's fused softmax), reuses ``P`` for the output
``P V`` (no second ``Q Kᵀ``), sums ``P`` over the heads (in head order) and adds that sum
times ``1 / heads`` into ONE float32 buffer per resolution and group. Nothing per head,
per layer or per step is kept: after the pass the buffer divided by its contribution
count is the head-, layer- (and step-/prompt-) mean.

Two loop orders compute the same sums in the same order (the matrix-product kernels may
round differently for different chunk shapes: equal to ~1e-7):

* ``per_head`` (default on the CPU, ``default_loop_order``): one batch row and
  ``chunk_size`` query rows at a time (at 4096 keys; proportionally more rows for fewer
  keys, e.g. cross-attention's 77, and at least one chunk per worker thread), the heads
  one after the other, so the scores,
  probabilities and head sum of a chunk (chunk_size × keys × 4 bytes each: 2 MiB at
  128 × 4096) stay in the core's cache through ``Q Kᵀ``, softmax, ``P V`` and the head
  sum, and the resolution buffer is read and written once per chunk. The three scratch
  tensors are allocated once per layer call and written with ``out=``. With several
  torch threads the chunks are shared out to as many worker threads, each running its
  chunks' operations single-threaded (one synchronisation per layer instead of one per
  operation; ``AttentionCapture(workers=...)``). Measured on a quiet 2-core Xeon (README
  "Performance", ``python -m benchmark.perf kernel``): per 64×64 SD 2-base layer, ``Q Kᵀ``
  and ``P V`` together cost about one fused SDPA call; softmax and the head sum are the
  capture's own cost.
* ``batched`` (default on a GPU): all captured batch rows and heads of ``chunk_size``
  query rows per step (few, large kernels: launch overhead dominates small ones on a GPU).

Batch rows that are not captured (group -1, e.g. the unconditional half of classifier-free
guidance) go through PyTorch's fused ``scaled_dot_product_attention`` like the plain pass.

Groups: every row of the UNet batch is mapped to a group (``-1`` = not captured, e.g. the
unconditional half of classifier-free guidance). Rows of one group are averaged together:
the harness maps all prompts of one image to one self-attention group (G = 1 per image)
and every prompt to its own cross-attention group.

The resolution of a layer is detected from its number of query tokens (side = √N), so
the same request works for any latent size; the UNet part comes from the layer name
(``benchmark.attention.layers``).
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from benchmark.attention.layers import AttentionLayer, check_selection, list_layers, select_layers
from benchmark.types import AttentionRequest

#: bump when captured values change for the same inputs (part of every cache key);
#: "2": per-head accumulation (P/heads added head by head: float32 rounding differs from "1");
#: "3": heads summed per chunk, then added once with alpha = 1/heads (the batched loop's order)
CAPTURE_VERSION = "3"


def _as_groups(groups: Sequence[int] | torch.Tensor, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(groups, dtype=torch.long).flatten()
    if tensor.numel() and int(tensor.min()) < -1:
        raise ValueError(f"{what}: group indices must be >= 0 (or -1 = not captured), got {tensor.tolist()}")
    return tensor


def _count_groups(groups: torch.Tensor) -> int:
    return int(groups.max()) + 1 if groups.numel() else 0


def default_cross_groups(groups: torch.Tensor) -> torch.Tensor:
    """One cross-attention group per captured row, numbered in row order; -1 rows stay -1."""
    captured = groups >= 0
    return torch.where(captured, torch.cumsum(captured.long(), 0) - 1, torch.full_like(groups, -1))


def default_loop_order(device: torch.device) -> str:
    """``per_head`` on the CPU (any thread count), ``batched`` elsewhere (module doc).

    Measured on a quiet 2-core Xeon (README "Performance", ``python -m benchmark.perf
    kernel`` and ``capture``): the per-head loop is the faster one at 1 and at 2 threads
    once its scratch tensors are reused and the head sum stays in cache; on a GPU the
    all-heads chunk keeps the kernels few and large.
    """
    return "per_head" if device.type == "cpu" else "batched"


#: query rows per chunk when none is given: per batch row on the CPU (the per-head loop:
#: 128 x 4096 keys x 4 bytes = 2 MiB per scratch tensor, cache-sized, measured best of
#: 64/128/256 on a 2-core Xeon), summed over the batch rows on a GPU (fewer, larger kernels:
#: 2048 rows x 5 heads x 4096 keys x 4 bytes = 160 MiB of scores for SD 2's 64x64 layers;
#: not yet measured on a GPU: ``python -m benchmark.perf capture --device cuda --chunk-size N``)
DEFAULT_CHUNK_ROWS = {"cpu": 128, "gpu": 2048}
#: keys at which the per-head loop takes ``chunk_size`` rows (a 64x64 self-attention layer)
CHUNK_KEYS = 4096


def default_chunk_size(device: torch.device) -> int:
    return DEFAULT_CHUNK_ROWS["cpu" if device.type == "cpu" else "gpu"]


class _Accumulator:
    """Running sums of head-mean attention probabilities of one kind (self or cross)."""

    def __init__(self, kind: str, resolutions: Iterable[int], n_groups: int):
        self.kind = kind
        self.resolutions = frozenset(int(r) for r in resolutions)
        self.n_groups = int(n_groups)
        self.sums: Dict[int, torch.Tensor] = {}  # side -> (G, side², keys) float32
        self.counts: Dict[int, torch.Tensor] = {}  # side -> (G,) number of (layer, row) contributions
        self.layers: Dict[int, Dict[str, None]] = {}  # side -> ordered names of the layers that ran
        self.seen: set = set()  # sides at which a layer of the selection ran
        self.finalised = False
        #: sides whose layers are ALSO kept one by one (head-sum, not averaged over layers);
        #: set by AttentionCapture from ``AttentionRequest.cross_layer_resolutions``
        self.per_layer: frozenset = frozenset()
        self.layer_sums: Dict[Tuple[int, str], torch.Tensor] = {}  # (side, layer) -> (G, side², keys)
        self.layer_counts: Dict[Tuple[int, str], torch.Tensor] = {}  # (side, layer) -> (G,)
        self.set_groups(torch.empty(0, dtype=torch.long))

    def set_groups(self, groups: torch.Tensor) -> None:
        if groups.numel() and int(groups.max()) >= self.n_groups:
            raise ValueError(
                f"{self.kind}-attention group index {int(groups.max())} out of range: the capture has {self.n_groups} groups"
            )
        captured = groups >= 0
        self.n_rows = int(groups.numel())
        self.rows = None if bool(captured.all()) else captured.nonzero().flatten()  # None = every row
        self.row_groups = groups[captured]
        #: (batch row, group) of every captured row, and the rows that are not captured
        self.plan: List[Tuple[int, int]] = list(zip(captured.nonzero().flatten().tolist(), self.row_groups.tolist()))
        self.skipped: List[int] = (~captured).nonzero().flatten().tolist()
        self._on_device: Dict[torch.device, Tuple[Optional[torch.Tensor], torch.Tensor]] = {}

    @property
    def has_rows(self) -> bool:
        return self.row_groups.numel() > 0

    def wants(self, side: int) -> bool:
        return side in self.resolutions and self.has_rows

    def _indices(self, device: torch.device) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        if device not in self._on_device:
            rows = None if self.rows is None else self.rows.to(device)
            self._on_device[device] = (rows, self.row_groups.to(device))
        return self._on_device[device]

    def buffer(self, side: int, n_keys: int, device: torch.device) -> torch.Tensor:
        if self.finalised:
            raise RuntimeError("attention capture already finalised: read the results after the last UNet call")
        if side not in self.sums:
            # ordinary tensors even under inference_mode: results are divided in place after
            # the pass and handed to code that may modify them
            with torch.inference_mode(False):
                self.sums[side] = torch.zeros(self.n_groups, side * side, n_keys, dtype=torch.float32, device=device)
                self.counts[side] = torch.zeros(self.n_groups, dtype=torch.float64)
            self.layers[side] = {}
        buffer = self.sums[side]
        if buffer.shape[-1] != n_keys:
            raise RuntimeError(
                f"{self.kind}-attention layers at resolution {side} have {buffer.shape[-1]} and {n_keys} keys; "
                "cannot average them"
            )
        return buffer

    def add_head_sum(self, buffer: torch.Tensor, head_sum: torch.Tensor, start: int, stop: int, alpha: float = 1.0) -> None:
        """Add ``alpha`` × ``head_sum`` (captured rows in row order, chunk, keys) into query rows
        [start, stop) of each row's group in ``buffer`` (G, queries, keys)."""
        _, row_groups = self._indices(head_sum.device)
        buffer[:, start:stop].index_add_(0, row_groups, head_sum, alpha=alpha)

    def count_layer(self, side: int, name: str) -> None:
        ones = torch.ones(self.row_groups.numel(), dtype=torch.float64)
        self.counts[side].index_add_(0, self.row_groups, ones)
        self.layers[side][name] = None
        if (side, name) in self.layer_counts:
            self.layer_counts[(side, name)].index_add_(0, self.row_groups, ones)

    # -- per-layer capture (SeeDiff's per-layer cross-attention normalisation) ----------
    def layer_buffer(self, side: int, name: str, n_keys: int, device: torch.device) -> Optional[torch.Tensor]:
        """The head-SUM buffer (G, side², keys) of one layer when ``side`` keeps its layers."""
        if side not in self.per_layer:
            return None
        if (side, name) not in self.layer_sums:
            with torch.inference_mode(False):
                self.layer_sums[(side, name)] = torch.zeros(
                    self.n_groups, side * side, n_keys, dtype=torch.float32, device=device
                )
                self.layer_counts[(side, name)] = torch.zeros(self.n_groups, dtype=torch.float64)
        return self.layer_sums[(side, name)]

    def layer_result(self) -> Dict[int, torch.Tensor]:
        """{side: (L, G, side², keys)}: each kept layer's head-sum, averaged over its calls
        (steps, rows of a group); layers of a side in SeeDiff's reading order ("up" layers,
        then "down", then "mid", each in the order they ran; ``src/seediff_app.py``
        ``aggregate_attention`` with ``from_where=("up", "down")``)."""
        order = {"up": 0, "down": 1, "mid": 2}
        out: Dict[int, torch.Tensor] = {}
        for side in sorted(self.per_layer, reverse=True):
            names = [n for (s, n) in self.layer_sums if s == side]
            if not names:
                continue
            ran = list(self.layers.get(side, {}))
            names.sort(key=lambda n: (order[_part_of(n)], ran.index(n) if n in ran else len(ran)))
            layers = []
            for name in names:
                counts = self.layer_counts[(side, name)].clamp(min=1)
                total = self.layer_sums[(side, name)]
                layers.append(total / counts.to(device=total.device, dtype=torch.float32).view(-1, 1, 1))
            out[side] = torch.stack(layers)
        return out

    def result(self, selection: str) -> Dict[int, torch.Tensor]:
        """Means per resolution, computed in place (the buffers become the results)."""
        missing = sorted(self.resolutions - set(self.sums), reverse=True)
        if missing:
            raise ValueError(
                f"{self.kind}-attention resolution(s) {missing} requested with layers={selection!r}, but no such "
                f"layer ran at that resolution; the selected layers ran at {sorted(self.seen, reverse=True)} for this "
                "latent size (resolutions are latent side / 1, 2, 4, 8: change image_size or the request)"
            )
        if not self.finalised:
            for side, total in self.sums.items():
                counts = self.counts[side]
                if bool((counts == 0).any()):
                    empty = (counts == 0).nonzero().flatten().tolist()
                    raise ValueError(f"{self.kind}-attention groups {empty} received no rows at resolution {side}")
                total.div_(counts.to(device=total.device, dtype=torch.float32).view(-1, 1, 1))
            self.finalised = True
        return dict(sorted(self.sums.items(), reverse=True))


def _part_of(layer_name: str) -> str:
    return "up" if layer_name.startswith("up_blocks") else "down" if layer_name.startswith("down_blocks") else "mid"


_POOL: Dict[str, object] = {}  # "pid", "workers", "pool": the per-process worker threads


def _worker_init() -> None:
    # one thread per worker: its own torch ops must not start a team of threads
    torch.set_num_threads(1)


def _run_on_cpu_workers(work, workers: int) -> None:
    """Run ``work()`` on ``workers`` threads at once (the calling one included) and return
    when all have returned; the first error is raised after all have stopped.

    Torch's intra-op threads are set to 1 for the duration (restored after, also on error):
    each chunk then runs its products, softmax and adds on one core without a barrier per
    operation (measured on a 2-core Xeon, README "Performance": one barrier per operation
    made the per-head loop 1.6x slower at 2 threads on a busy machine). Grad / inference
    mode is thread-local, so the caller's is set in the workers too."""
    if workers <= 1:
        work()
        return
    pool = _POOL.get("pool")
    if _POOL.get("pid") != os.getpid() or _POOL.get("workers", 0) < workers - 1:
        # a forked child (data-loader worker) has no threads: it builds its own pool; a
        # larger pool replaces a smaller one, whose idle threads then exit
        if _POOL.get("pid") == os.getpid() and pool is not None:
            pool.shutdown(wait=False)
        pool = ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="attention-capture", initializer=_worker_init)
        _POOL.update(pid=os.getpid(), workers=workers - 1, pool=pool)
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def in_callers_mode() -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            work()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        futures = [pool.submit(in_callers_mode) for _ in range(workers - 1)]
        errors = []
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - re-raised below, after the workers stopped
            errors.append(error)
        for future in futures:
            try:
                future.result()
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
        if errors:
            raise errors[0]
    finally:
        torch.set_num_threads(threads)


class CapturingAttnProcessor:
    """Attention processor that also accumulates head-mean probabilities (see module doc).

    Layers whose resolution was not requested (or calls with no captured rows) are handed
    to the processor it replaced, i.e. keep the fused kernel.
    """

    def __init__(self, original, accumulator: _Accumulator, layer_name: str, chunk_size: Optional[int]):
        self.original = original
        self.accumulator = accumulator
        self.layer_name = layer_name
        #: None = ``default_chunk_size`` of the device the layer runs on
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        #: "per_head" | "batched" | None (= ``default_loop_order``; module doc)
        self.loop_order: Optional[str] = None
        #: threads of the ``per_head`` loop (None = ``torch.get_num_threads()``; module doc)
        self.chunk_workers: Optional[int] = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        n_queries = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        side = math.isqrt(n_queries)
        square = side * side == n_queries
        if square:
            self.accumulator.seen.add(side)
        if not square or not self.accumulator.wants(side):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if hidden_states.shape[0] != self.accumulator.n_rows:
            raise RuntimeError(
                f"attention capture groups describe {self.accumulator.n_rows} batch rows but layer {self.layer_name} "
                f"got a batch of {hidden_states.shape[0]}: call set_groups() before each UNet call"
            )
        return self._forward(attn, hidden_states, encoder_hidden_states, attention_mask, temb, side)

    # the steps around the attention product follow diffusers' AttnProcessor2_0, so the
    # output equals the uninstrumented layer
    def _forward(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, side: int):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, n_keys_total, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n_keys_total, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = self._attend_and_capture(query, key, value, attention_mask, attn.scale, side)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _attend_and_capture(self, query, key, value, mask, scale: float, side: int) -> torch.Tensor:
        batch, heads, n_queries, head_dim = query.shape
        acc = self.accumulator
        buffer = acc.buffer(side, key.shape[2], query.device)
        layer_buffer = acc.layer_buffer(side, self.layer_name, key.shape[2], query.device)
        if mask is not None and mask.dtype == torch.bool:  # SDPA's boolean convention: True = may attend
            mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf"))
        out = torch.empty(batch, heads, n_queries, head_dim, dtype=torch.float32, device=query.device)
        if acc.skipped:  # rows nobody reads the attention of: the fused kernel, as in the plain pass
            rows = torch.tensor(acc.skipped, device=query.device)
            row_mask = None if mask is None else mask.index_select(0, rows) if mask.shape[0] > 1 else mask
            out[rows] = F.scaled_dot_product_attention(
                query.index_select(0, rows), key.index_select(0, rows), value.index_select(0, rows),
                attn_mask=None if row_mask is None else row_mask.to(query.dtype), scale=scale,
            ).float()
        # float32 probabilities whatever the model dtype; q is scaled once, before QKᵀ
        query = query.float() * scale
        key_t = key.float().transpose(-1, -2)
        value = value.float()
        if (self.loop_order or default_loop_order(query.device)) == "per_head":
            self._per_head(query, key_t, value, mask, buffer, out, layer_buffer)
        else:
            self._batched(query, key_t, value, mask, buffer, out, layer_buffer)
        acc.count_layer(side, self.layer_name)
        return out

    @staticmethod
    def _add_mask(scores: torch.Tensor, mask: Optional[torch.Tensor], start: int, stop: int) -> None:
        """``mask`` (..., queries or 1, keys) float: add its rows [start, stop) to ``scores``."""
        if mask is not None:
            scores += mask[..., start:stop, :] if mask.shape[-2] > 1 else mask

    def _per_head(self, query, key_t, value, mask, buffer, out, layer_buffer=None) -> None:
        """CPU loop order: cache-sized chunk of query rows, batch row, head (module doc).

        Each worker (``chunk_workers``) takes chunks of query rows from one shared list
        until none is left and computes every captured row and head of its chunk: the
        chunks write disjoint rows of ``out``, ``buffer`` and ``layer_buffer`` (this layer's
        own head-SUM buffer when its side keeps layers), so no two workers touch the same
        floats and the result does not depend on the number of workers."""
        n_queries, n_keys = query.shape[2], key_t.shape[-1]
        workers = max(1, self.chunk_workers or torch.get_num_threads())
        # chunk_size rows at CHUNK_KEYS keys; layers with fewer keys (cross-attention: 77) take
        # proportionally more rows, so every chunk's scratch has the same, cache-sized, size
        # and small layers are not cut into many tiny operations; at least one chunk per worker
        rows = (self.chunk_size or default_chunk_size(query.device)) * max(1, CHUNK_KEYS // n_keys)
        rows = max(1, min(rows, -(-n_queries // workers)))
        chunks = [(start, min(n_queries, start + rows)) for start in range(0, n_queries, rows)]
        take = threading.Lock()

        def work() -> None:
            # scores, probabilities and head sum of one chunk, written with out= (module doc)
            scratch = tuple(torch.empty(rows, n_keys, dtype=torch.float32, device=query.device) for _ in range(3))
            while True:
                with take:
                    if not chunks:
                        return
                    start, stop = chunks.pop(0)
                self._per_head_chunk(query, key_t, value, mask, buffer, out, layer_buffer, start, stop, scratch)

        _run_on_cpu_workers(work, min(len(chunks), workers))

    def _per_head_chunk(self, query, key_t, value, mask, buffer, out, layer_buffer, start, stop, scratch) -> None:
        """Query rows [start, stop) of every captured batch row, heads one after the other;
        the head sum stays in cache and the resolution buffer is read and written once."""
        heads = query.shape[1]
        chunk = stop - start
        scores, probs, head_sum = (t[:chunk] for t in scratch)
        for row, group in self.accumulator.plan:
            row_mask = None if mask is None else mask[row if mask.shape[0] > 1 else 0]
            for head in range(heads):
                torch.mm(query[row, head, start:stop], key_t[row, head], out=scores)
                if row_mask is not None:
                    self._add_mask(scores, row_mask[head if row_mask.shape[0] > 1 else 0], start, stop)
                # the first head's probabilities are written straight into the head sum
                head_probs = head_sum if head == 0 else probs
                # PyTorch's fused softmax kernel (measured 1.4x faster here than max/exp_/div_
                # in place), in its out= form so the scratch tensor is reused
                torch.ops.aten._softmax.out(scores, -1, False, out=head_probs)
                torch.mm(head_probs, value[row, head], out=out[row, head, start:stop])
                if head:
                    head_sum.add_(head_probs)
            buffer[group, start:stop].add_(head_sum, alpha=1.0 / heads)
            if layer_buffer is not None:
                layer_buffer[group, start:stop].add_(head_sum)

    def _batched(self, query, key_t, value, mask, buffer, out, layer_buffer=None) -> None:
        """GPU loop order: chunks of query rows over all captured batch rows and heads at once."""
        acc = self.accumulator
        rows, row_groups = acc._indices(query.device)
        if rows is not None:
            query, key_t, value = query.index_select(0, rows), key_t.index_select(0, rows), value.index_select(0, rows)
            if mask is not None and mask.shape[0] > 1:
                mask = mask.index_select(0, rows)
        batch, heads, n_queries = query.shape[:3]
        rows_per_chunk = max(1, (self.chunk_size or default_chunk_size(query.device)) // batch)
        for start in range(0, n_queries, rows_per_chunk):
            stop = min(n_queries, start + rows_per_chunk)
            scores = torch.matmul(query[:, :, start:stop], key_t)
            self._add_mask(scores, mask, start, stop)
            probs = torch.softmax(scores, dim=-1)
            del scores
            chunk_out = torch.matmul(probs, value)
            if rows is None:
                out[:, :, start:stop] = chunk_out
            else:
                out[rows, :, start:stop] = chunk_out
            head_sum = probs.sum(dim=1)  # heads in order, as the per-head loop adds them
            acc.add_head_sum(buffer, head_sum, start, stop, alpha=1.0 / heads)
            if layer_buffer is not None:
                acc.add_head_sum(layer_buffer, head_sum, start, stop)


class AttentionCapture:
    """Install capturing processors on the layers ``request`` selects, for one ``with`` scope.

    unet: a diffusers ``UNet2DConditionModel``.
    groups: self-attention group of every row of the next UNet batch (-1 = not captured).
    chunk_size: query rows per chunk: per batch row in the ``per_head`` loop (at 4096
      keys, ``CHUNK_KEYS``; more rows for fewer keys), summed over the captured batch rows
      in the ``batched`` one (see the module doc); None =
      ``default_chunk_size`` of the device (128 on the CPU, 2048 on a GPU).
    cross_groups: cross-attention group of every row (default: one per captured row).
    n_groups / n_cross_groups: number of groups when later calls (``set_groups``) use more
      groups than the first one.
    loop_order: "per_head" | "batched" | None (= ``default_loop_order``); the same numbers
      either way (module doc), only the speed differs.
    workers: threads of the ``per_head`` loop, each computing whole chunks with single-
      threaded torch operations (None = ``torch.get_num_threads()``; 1 = the calling thread
      only, each operation using torch's intra-op threads). The same numbers for any value.

    After the last UNet call: ``self_attention()`` -> {side: (G, side², side²)},
    ``cross_attention()`` -> {side: (G', side², 77)}, float32 means; ``layers`` names the
    layers that contributed to each resolution.
    """

    def __init__(
        self,
        unet,
        request: AttentionRequest,
        groups: Sequence[int] | torch.Tensor,
        chunk_size: Optional[int] = None,
        cross_groups: Sequence[int] | torch.Tensor | None = None,
        n_groups: Optional[int] = None,
        n_cross_groups: Optional[int] = None,
        loop_order: Optional[str] = None,
        workers: Optional[int] = None,
    ):
        check_selection(request.self_layers, "AttentionRequest.self_layers")
        check_selection(request.cross_layers, "AttentionRequest.cross_layers")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.unet = unet
        self.request = request
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        if loop_order not in (None, "per_head", "batched"):
            raise ValueError(f"loop_order must be 'per_head', 'batched' or None, got {loop_order!r}")
        self.loop_order = loop_order
        if workers is not None and int(workers) < 1:
            raise ValueError(f"workers must be >= 1 or None, got {workers}")
        self.workers = None if workers is None else int(workers)
        groups = _as_groups(groups, "groups")
        cross = default_cross_groups(groups) if cross_groups is None else _as_groups(cross_groups, "cross_groups")
        self._self = _Accumulator("self", request.self_resolutions, n_groups or _count_groups(groups))
        self._cross = _Accumulator("cross", request.cross_resolutions, n_cross_groups or _count_groups(cross))
        self._cross.per_layer = frozenset(int(r) for r in request.cross_layer_resolutions)
        missing = sorted(self._cross.per_layer - set(self._cross.resolutions))
        if missing:
            raise ValueError(
                f"AttentionRequest.cross_layer_resolutions {missing} are not in cross_resolutions "
                f"{sorted(self._cross.resolutions, reverse=True)}"
            )
        self.set_groups(groups, cross)
        layers = list_layers(unet.attn_processors)
        self.selected: Dict[str, List[AttentionLayer]] = {
            "self": select_layers(layers, "self", request.self_layers) if request.self_resolutions else [],
            "cross": select_layers(layers, "cross", request.cross_layers) if request.cross_resolutions else [],
        }
        for kind, resolutions in (("self", request.self_resolutions), ("cross", request.cross_resolutions)):
            if resolutions and not self.selected[kind]:
                selection = request.self_layers if kind == "self" else request.cross_layers
                raise ValueError(f"layers={selection!r} selects no {kind}-attention layer of this UNet")
        self._original: Optional[dict] = None

    def set_groups(self, groups: Sequence[int] | torch.Tensor, cross_groups: Sequence[int] | torch.Tensor | None = None) -> None:
        """Row -> group maps of the next UNet call (its batch may differ from the previous one)."""
        groups = _as_groups(groups, "groups")
        cross = default_cross_groups(groups) if cross_groups is None else _as_groups(cross_groups, "cross_groups")
        if cross.numel() != groups.numel():
            raise ValueError(f"groups has {groups.numel()} rows but cross_groups has {cross.numel()}")
        self._self.set_groups(groups)
        self._cross.set_groups(cross)

    def __enter__(self) -> "AttentionCapture":
        if self._original is not None:
            raise RuntimeError("AttentionCapture is not re-entrant")
        original = dict(self.unet.attn_processors)
        replaced = dict(original)
        for kind, accumulator in (("self", self._self), ("cross", self._cross)):
            for layer in self.selected[kind]:
                processor = CapturingAttnProcessor(original[layer.name], accumulator, layer.name, self.chunk_size)
                processor.loop_order = self.loop_order
                processor.chunk_workers = self.workers
                replaced[layer.name] = processor
        try:
            self.unet.set_attn_processor(replaced)  # it empties the dict it is given: `replaced` is a copy
        except BaseException:
            self.unet.set_attn_processor(dict(original))
            raise
        self._original = original
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        original, self._original = self._original, None
        self.unet.set_attn_processor(dict(original))
        return False

    def self_attention(self) -> Dict[int, torch.Tensor]:
        return self._self.result(self.request.self_layers) if self.request.self_resolutions else {}

    def cross_attention(self) -> Dict[int, torch.Tensor]:
        return self._cross.result(self.request.cross_layers) if self.request.cross_resolutions else {}

    def cross_attention_layers(self) -> Dict[int, torch.Tensor]:
        """{side: (L, G', side², 77)} for ``request.cross_layer_resolutions``: every selected
        cross-attention layer of that side on its own, summed over heads (not averaged),
        averaged over its calls; {} when none were requested."""
        return self._cross.layer_result()

    @property
    def layers(self) -> Dict[Tuple[str, int], List[str]]:
        """(kind, side) -> names of the layers averaged into that resolution."""
        found = {}
        for accumulator in (self._self, self._cross):
            for side, names in accumulator.layers.items():
                found[(accumulator.kind, side)] = list(names)
        return found
