"""Per-image count records: append-only while running, one tidy table at the end.

While a run is going, every finished image appends one JSON line (all grid points of the
image) to ``records.<rank>.jsonl`` and flushes it, so a killed run loses at most the image
in flight; a truncated last line is ignored on resume. At the end the records become
``per_image.parquet``: one row per (configuration, image) with the metric's count arrays
stored sparsely (flat index + value), from which every total can be recomputed exactly.

A damaged line anywhere in a records file (bytes that are not UTF-8 JSON, or JSON that is
not a record) costs only its own image: every valid record is kept, a warning names the
file and the line numbers, the owning process moves the bad lines to
``records.rank<r>.jsonl.corrupt`` and rewrites the file without them (atomically) when it
resumes, also when no image is left to compute, and the images without a valid record are
computed again. A damaged header is different: without it no record of the
file can be checked against the configuration, so reading fails naming the file.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from benchmark.fileio import atomic_write_bytes, naming_path

log = logging.getLogger("benchmark.records")

HEADER_KIND = "header"
IMAGE_KIND = "image"


def sparse(arr: np.ndarray) -> Tuple[List[int], List[int]]:
    flat = np.asarray(arr, dtype=np.int64).ravel()
    idx = np.flatnonzero(flat)
    return idx.tolist(), flat[idx].tolist()


def dense(idx: Sequence[int], val: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    out = np.zeros(int(np.prod(shape)) if len(shape) else 1, dtype=np.int64)
    if len(idx):
        np.add.at(out, np.asarray(idx, dtype=np.int64), np.asarray(val, dtype=np.int64))
    return out.reshape(tuple(shape))


@dataclass
class ImageRecord:
    image_id: str
    #: "ok" or "skipped" (unreadable input with dataset.on_error=skip)
    status: str
    #: UNet evaluations spent on this image (0 when its attention came from the cache)
    passes: int = 0
    #: per grid point: {state name: (idx, val)}
    counts: List[Dict[str, Tuple[List[int], List[int]]]] = field(default_factory=list)
    reason: Optional[str] = None
    #: per grid point: number of segments/classes predicted (diagnostics)
    n_pred: List[int] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {
            "kind": IMAGE_KIND,
            "image_id": self.image_id,
            "status": self.status,
            "passes": self.passes,
            "reason": self.reason,
            "n_pred": self.n_pred,
            "counts": [{k: [list(i), list(v)] for k, (i, v) in point.items()} for point in self.counts],
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "ImageRecord":
        """The record of one JSON line; ValueError when the line is not a well-formed record."""
        try:
            rec = cls(
                image_id=row["image_id"],
                status=row["status"],
                passes=int(row.get("passes", 0)),
                reason=row.get("reason"),
                n_pred=[int(n) for n in row.get("n_pred", [])],
                counts=[{str(k): (list(iv[0]), list(iv[1])) for k, iv in point.items()} for point in row.get("counts", [])],
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ValueError(f"not an image record ({type(err).__name__}: {err})") from err
        if not isinstance(rec.image_id, str) or rec.status not in ("ok", "skipped"):
            raise ValueError(f"not an image record (image_id {rec.image_id!r}, status {rec.status!r})")
        for point in rec.counts:
            for key, (idx, val) in point.items():
                if len(idx) != len(val) or not all(isinstance(x, int) for x in idx + val):
                    raise ValueError(f"not an image record (counts {key!r} are not two integer lists of one length)")
        return rec


class RunMismatchError(RuntimeError):
    """The run directory holds records of a different (or, header damaged, unknown) configuration."""


def _numbers(lines: Sequence[int], shown: int = 10) -> str:
    return ", ".join(str(n) for n in lines[:shown]) + (f" ... ({len(lines)} lines)" if len(lines) > shown else "")


class RecordStore:
    """Append-only per-image records of one process (rank) in a run directory."""

    def __init__(self, run_dir: Path, fingerprint: Dict[str, Any], rank: int = 0):
        self.run_dir = Path(run_dir)
        self.fingerprint = fingerprint
        self.path = self.run_dir / f"records.rank{rank}.jsonl"
        self._fh = None
        #: records files read with damaged lines (open() repairs this rank's own)
        self._damaged: set = set()

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def _parse(path: Path) -> Tuple[Optional[Dict[str, Any]], Dict[str, ImageRecord], List[int], bool]:
        """(header fingerprint, records by image id, 1-based numbers of the damaged lines,
        whether the last of them is a truncated last line). A later record of an image
        replaces an earlier one."""
        header, records, bad = None, {}, []
        with naming_path(path, "records file"):
            data = path.read_bytes()
        lines = data.split(b"\n")
        last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                if row.get("kind") == HEADER_KIND:
                    if not isinstance(row.get("fingerprint"), dict):
                        raise ValueError("header without a fingerprint")
                    header = row["fingerprint"]
                else:
                    rec = ImageRecord.from_json(row)
                    records[rec.image_id] = rec
            except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                bad.append(n + 1)
        # a damaged last line without its newline is the line in flight when the run was killed
        return header, records, bad, bool(bad) and bad[-1] == last + 1 and not data.endswith(b"\n")

    def _read_file(self, path: Path) -> Tuple[Optional[Dict[str, Any]], Dict[str, ImageRecord]]:
        header, records, bad, tail = self._parse(path)
        if bad:
            self._damaged.add(Path(path))
        if bad and header is None and records:
            raise RunMismatchError(
                f"{path}: the header line is damaged (line(s) {_numbers(bad)} unreadable), so its records cannot be "
                "checked against this configuration. Use another hydra.run.dir, or run.resume=false to move the "
                "old records aside."
            )
        middle = bad[:-1] if tail else bad
        if tail:  # the line in flight when the run was killed
            log.warning("ignoring a truncated last record in %s (line %d; its image is recomputed)", path, bad[-1])
        if middle:
            log.warning(
                "%s: line(s) %s are damaged and ignored; the %d valid record(s) are kept and only the images "
                "without one are recomputed", path, _numbers(middle), len(records),
            )
        return header, records

    def load_all(self) -> Dict[str, ImageRecord]:
        """Records of every rank file in the run directory, checked against the fingerprint."""
        records: Dict[str, ImageRecord] = {}
        for path in sorted(self.run_dir.glob("records.rank*.jsonl")):
            header, recs = self._read_file(path)
            # a header without records (a run that stopped before its first image) holds
            # nothing of another configuration: open() starts that file afresh
            if header is not None and header != self.fingerprint and recs:
                diff = sorted(k for k in set(header) | set(self.fingerprint) if header.get(k) != self.fingerprint.get(k))
                raise RunMismatchError(
                    f"{path} holds records of a different configuration (differs in: {', '.join(diff)}). "
                    "Use another hydra.run.dir, or run.resume=false to move the old records aside."
                )
            records.update(recs)
        return records

    # -- writing ---------------------------------------------------------------------------
    def open(self) -> None:
        """Ready to append. The file itself is created by the first record, so a run that
        stops before its first image writes nothing into the run directory. A file of this
        configuration read with damaged lines is repaired now (:meth:`repair`), even when no
        image is left to compute, so its warning is not repeated by every later run."""
        self._pending = True
        if self.path in self._damaged and self.path.is_file() and self._parse(self.path)[0] == self.fingerprint:
            self.repair()

    def _open_file(self) -> None:
        with naming_path(self.path, "records file"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0  # a run killed in its header too
            if not new:
                header, recs = self._read_file(self.path)
                new = not recs and header != self.fingerprint  # a header-only file of another config
            if not new:
                self.repair()
            self._fh = open(self.path, "w" if new else "a", encoding="utf-8")
        if new:
            self._write({"kind": HEADER_KIND, "fingerprint": self.fingerprint})

    def repair(self) -> None:
        """Rewrite the file without its damaged lines, atomically (temp file + rename: a crash
        leaves the old file or the new one). Damaged lines before the last are moved to
        ``<file>.corrupt``; a truncated last line (the record in flight when a run was killed)
        is dropped. Every valid line is kept, in order. A clean file is left untouched."""
        with naming_path(self.path, "records file"):
            data = self.path.read_bytes()
        _, _, bad, tail = self._parse(self.path)
        if not bad and (not data or data.endswith(b"\n")):
            self._damaged.discard(self.path)
            return
        middle = set(bad[:-1] if tail else bad)
        dropped = middle | ({bad[-1]} if tail else set())
        lines = data.split(b"\n")
        # a valid last line without its newline is kept (and gets one)
        kept = [line for n, line in enumerate(lines) if n + 1 not in dropped and line.strip()]
        if middle:
            corrupt = self.path.with_name(self.path.name + ".corrupt")
            with naming_path(corrupt, "damaged record lines"), open(corrupt, "ab") as fh:
                fh.write(b"".join(lines[n - 1] + b"\n" for n in sorted(middle)))
            log.warning("%s: moved %d damaged line(s) to %s", self.path, len(middle), corrupt)
        atomic_write_bytes(self.path, b"".join(line + b"\n" for line in kept))
        self._damaged.discard(self.path)

    def _write(self, row: Dict[str, Any]) -> None:
        if self._fh is None and getattr(self, "_pending", False):
            self._pending = False
            self._open_file()
        assert self._fh is not None, "RecordStore.open() first"
        with naming_path(self.path, "records file"):
            self._fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def append(self, record: ImageRecord) -> None:
        self._write(record.to_json())

    def close(self) -> None:
        self._pending = False
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with naming_path(self.path, "records file"):
                fh.close()

    def move_aside(self) -> Optional[Path]:
        """run.resume=false: keep old records under a new name instead of deleting them."""
        paths = sorted(self.run_dir.glob("records.rank*.jsonl"))
        if not paths:
            return None
        n = 0
        while (self.run_dir / f"old_records.{n}").exists():
            n += 1
        dest = self.run_dir / f"old_records.{n}"
        dest.mkdir()
        for p in paths:
            p.rename(dest / p.name)
        log.warning("run.resume=false: moved %d earlier record file(s) to %s", len(paths), dest)
        return dest


def sum_counts(
    records: Iterable[ImageRecord], n_points: int, shapes: Mapping[str, Sequence[int]]
) -> List[Dict[str, np.ndarray]]:
    """Dataset state per grid point: the sum of the per-image count records."""
    totals = [{k: np.zeros(tuple(s), dtype=np.int64) for k, s in shapes.items()} for _ in range(n_points)]
    for rec in records:
        if rec.status != "ok":
            continue
        for point, counts in zip(totals, rec.counts):
            for key, (idx, val) in counts.items():
                if len(idx):
                    np.add.at(point[key].reshape(-1), np.asarray(idx, dtype=np.int64), np.asarray(val, dtype=np.int64))
    return totals


def to_frame(records: Sequence[ImageRecord], points_params: Sequence[Dict[str, Any]]):
    """One row per (configuration, image): the content of per_image.parquet."""
    import pandas as pd

    rows = []
    for rec in sorted(records, key=lambda r: r.image_id):
        if rec.status != "ok":
            rows.append(
                {"config": -1, "params": None, "image_id": rec.image_id, "status": rec.status,
                 "reason": rec.reason, "passes": rec.passes, "n_pred": None}
            )
            continue
        for j, counts in enumerate(rec.counts):
            row = {
                "config": j,
                "params": json.dumps(points_params[j], sort_keys=True),
                "image_id": rec.image_id,
                "status": rec.status,
                "reason": None,
                "passes": rec.passes if j == 0 else 0,  # passes are shared by all configurations
                "n_pred": rec.n_pred[j] if j < len(rec.n_pred) else None,
            }
            for key, (idx, val) in counts.items():
                row[f"{key}.idx"] = list(idx)
                row[f"{key}.val"] = list(val)
            rows.append(row)
    return pd.DataFrame(rows)


def from_frame(frame) -> Tuple[List[ImageRecord], List[Dict[str, Any]]]:
    """Inverse of :func:`to_frame` (for ``benchmark.report`` and tests)."""
    keys = sorted({c[: -len(".idx")] for c in frame.columns if c.endswith(".idx")})
    by_image: Dict[str, ImageRecord] = {}
    params: Dict[int, Dict[str, Any]] = {}
    for row in frame.sort_values(["image_id", "config"]).to_dict("records"):
        image_id = row["image_id"]
        if row["status"] != "ok":
            by_image[image_id] = ImageRecord(image_id, row["status"], int(row["passes"]), reason=row["reason"])
            continue
        rec = by_image.setdefault(image_id, ImageRecord(image_id, "ok", 0))
        rec.passes += int(row["passes"])
        j = int(row["config"])
        params[j] = json.loads(row["params"])
        rec.counts.append({k: (list(row[f"{k}.idx"]), list(row[f"{k}.val"])) for k in keys})
        if row.get("n_pred") is not None and row["n_pred"] == row["n_pred"]:
            rec.n_pred.append(int(row["n_pred"]))
    return list(by_image.values()), [params[j] for j in sorted(params)]
