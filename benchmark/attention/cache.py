"""On-disk attention cache: one safetensors file per (image, extraction) content key.

Key: SHA-256 of the canonical JSON of what determines the captured attention (model
fingerprint, dtype, extraction settings, prompts, request, image id) plus
``CAPTURE_VERSION``, so a changed capture invalidates old entries by itself.

File: ``<root>/<key[:2]>/<key>.safetensors`` holding ``self.<side>`` / ``cross.<side>``
/ ``feature.<name>`` (block outputs, stored and restored without renormalisation) tensors in the storage dtype (float16 by default: 32 MiB per image for the 64x64
self-attention) and, in the header metadata, the queries, token positions and a SHA-256 of
the tensor bytes. Writes go to a temporary file in the same folder, are fsynced and
``os.replace``d: readers see the old file, the new one or none, never a partial one, and
concurrent writers of the same key each replace the file with a complete copy.
A truncated or corrupt file (header, length or checksum) is logged as a warning naming
it, removed, and reported as a miss so the caller recomputes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from benchmark.attention.capture import CAPTURE_VERSION
from benchmark.fileio import atomic_write_bytes
from benchmark.types import AttentionMaps, PromptQuery

log = logging.getLogger(__name__)

def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FORMAT = "attention-maps/1"


def _canonical(value: Any, where: str) -> Any:
    """JSON-ready form of a key part; fails on anything without a stable text form."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v, where) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"attention cache key part {where!r} has type {type(value).__name__}, which has no stable form")


def _tensor_digest(tensors: Dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _restored(stored: torch.Tensor) -> torch.Tensor:
    """float32 maps from their stored form; reduced dtypes get rows renormalised to sum to 1."""
    values = stored.float()
    if stored.dtype != torch.float32:  # undo the row-sum drift of rounding
        values /= values.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return values


class CorruptCacheFile(ValueError):
    pass


class AttentionCache:
    """Content-addressed store of ``AttentionMaps`` (see module doc).

    root: cache folder (created on demand; safe to share between concurrent jobs).
    dtype: storage dtype: float16 | bfloat16 | float32. Loaded maps are float32; in a
      reduced dtype their rows are renormalised to sum to 1 again.
    """

    def __init__(self, root: str | os.PathLike, dtype: str = "float16"):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"Invalid value {dtype!r} for config key 'cache.dtype'. Valid choices: {', '.join(STORAGE_DTYPES)}.")
        self.root = Path(root).expanduser()
        self.dtype = dtype
        self.hits = self.misses = self.corrupt = 0
        self.writes = self.bytes_written = 0

    def key(self, **parts: Any) -> str:
        """SHA-256 of the canonical JSON of ``parts`` + capture version + storage dtype."""
        payload = {"parts": _canonical(parts, "parts"), "capture_version": CAPTURE_VERSION, "storage": self.dtype}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def path(self, key: str) -> Path:
        if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not an attention cache key: {key!r}")
        return self.root / key[:2] / f"{key}.safetensors"

    def as_stored(self, maps: AttentionMaps) -> AttentionMaps:
        """``maps`` exactly as a later ``load`` will return them (storage rounding included),
        on their own device: a run that fills the cache scores the same numbers as a run
        that reads it."""
        storage = STORAGE_DTYPES[self.dtype]
        return AttentionMaps(
            {side: _restored(a.detach().to(storage)) for side, a in maps.self_attn.items()},
            {side: _restored(a.detach().to(storage)) for side, a in maps.cross_attn.items()},
            list(maps.queries),
            [list(p) for p in maps.token_positions],
            {side: _restored(a.detach().to(storage)) for side, a in maps.cross_attn_layers.items()},
            {name: f.detach().to(storage).float() for name, f in maps.features.items()},
        )

    # -- write --------------------------------------------------------------------------
    def save(self, key: str, maps: AttentionMaps) -> int:
        """Store ``maps`` under ``key`` atomically; returns the file size in bytes."""
        from safetensors.torch import save

        storage = STORAGE_DTYPES[self.dtype]
        tensors = {f"self.{side}": a.detach().to("cpu", storage).contiguous() for side, a in maps.self_attn.items()}
        tensors.update({f"cross.{side}": a.detach().to("cpu", storage).contiguous() for side, a in maps.cross_attn.items()})
        tensors.update(
            {f"crosslayers.{side}": a.detach().to("cpu", storage).contiguous() for side, a in maps.cross_attn_layers.items()}
        )
        tensors.update({f"feature.{name}": f.detach().to("cpu", storage).contiguous() for name, f in maps.features.items()})
        metadata = {
            "format": FORMAT,
            "capture_version": CAPTURE_VERSION,
            "queries": json.dumps([dataclasses.asdict(q) for q in maps.queries]),
            "token_positions": json.dumps(maps.token_positions),
            "sha256": _tensor_digest(tensors),
        }
        data = save(tensors, metadata=metadata)
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data, _FILE_MODE)
        self.writes += 1
        self.bytes_written += len(data)
        return len(data)

    # -- read ---------------------------------------------------------------------------
    def load(self, key: str) -> Optional[AttentionMaps]:
        """The stored maps, or None when absent or unreadable (then the file is removed)."""
        target = self.path(key)
        try:
            with open(target, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            maps = self._decode(data)
        except CorruptCacheFile as err:
            self.corrupt += 1
            self.misses += 1
            log.warning("attention cache: %s is unreadable (%s); removing it, it will be recomputed", target, err)
            self._remove_if_unchanged(target, stat)
            return None
        self.hits += 1
        return maps

    @staticmethod
    def _remove_if_unchanged(target: Path, stat: os.stat_result) -> None:
        # another job may have replaced the bad file with a good one since we read it
        try:
            now = os.stat(target)
            if (now.st_ino, now.st_size, now.st_mtime_ns) == (stat.st_ino, stat.st_size, stat.st_mtime_ns):
                os.unlink(target)
        except FileNotFoundError:
            pass

    def _decode(self, data: bytes) -> AttentionMaps:
        from safetensors.torch import load

        if len(data) < 8:
            raise CorruptCacheFile(f"{len(data)} bytes, shorter than a safetensors header")
        header_len = int.from_bytes(data[:8], "little")
        if header_len > len(data) - 8:
            raise CorruptCacheFile(f"header of {header_len} bytes in a {len(data)}-byte file (truncated)")
        try:
            header = json.loads(data[8 : 8 + header_len])
            metadata = header.get("__metadata__") or {}
            tensors = load(data)
        except Exception as err:  # safetensors raises its own error type for bad lengths
            raise CorruptCacheFile(f"{type(err).__name__}: {err}") from None
        if metadata.get("format") != FORMAT:
            raise CorruptCacheFile(f"format {metadata.get('format')!r}, expected {FORMAT!r}")
        if _tensor_digest(tensors) != metadata.get("sha256"):
            raise CorruptCacheFile("checksum mismatch")
        try:
            queries = [PromptQuery(**q) for q in json.loads(metadata["queries"])]
            positions = [list(p) for p in json.loads(metadata["token_positions"])]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCacheFile(f"bad metadata: {err}") from None
        maps = AttentionMaps({}, {}, queries, positions)
        for name, tensor in tensors.items():
            kind, rest = name.split(".", 1)
            if kind == "feature":  # block outputs: no row renormalisation
                maps.features[rest] = tensor.float()
                continue
            target = {"self": maps.self_attn, "cross": maps.cross_attn, "crosslayers": maps.cross_attn_layers}.get(kind)
            if target is None:
                raise CorruptCacheFile(f"unknown tensor {name!r}")
            target[int(rest)] = _restored(tensor)
        maps.self_attn = dict(sorted(maps.self_attn.items(), reverse=True))
        maps.cross_attn = dict(sorted(maps.cross_attn.items(), reverse=True))
        return maps

    @staticmethod
    def nbytes(maps: AttentionMaps, dtype: str = "float16") -> int:
        """Tensor bytes one image's maps take in ``dtype`` (the file adds a small header)."""
        itemsize = torch.empty(0, dtype=STORAGE_DTYPES[dtype]).element_size()
        return itemsize * sum(
            a.numel() for d in (maps.self_attn, maps.cross_attn, maps.cross_attn_layers, maps.features) for a in d.values()
        )
