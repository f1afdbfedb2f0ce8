"""Records files survive damage and full disks (issue 14.14): valid records are kept, only
the images without one are recomputed, and every failed write names its file."""
from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from benchmark.compose import run_with_overrides
from benchmark.fileio import FileWriteError, atomic_write_text
from benchmark.records import RunMismatchError

DATA = ["dataset=synthetic", "dataset.n_images=4", "run.progress=false", "metric=miou"]


def _predictions_run(tmp_path: Path):
    """Ground truth written as predictions: a run with no model, 4 images."""
    from tests.test_runner import _gt_predictions

    preds = _gt_predictions(DATA, tmp_path / "preds")
    return DATA + ["method=predictions", f"method.dir={preds}"]


def _image_lines(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.startswith('{"kind":"image"')]


GARBAGE = [b"[1, 2]", b"\x00\x00\x00\xff\xfe garbage", b'{"kind":"image","image_id":5}']


def test_garbage_lines_in_the_middle_keep_every_valid_record(tmp_path, caplog):
    args = _predictions_run(tmp_path)
    fresh = run_with_overrides(args, tmp_path / "fresh")
    records = tmp_path / "fresh" / "records.rank0.jsonl"
    header, r1, r2, r3, r4 = records.read_bytes().split(b"\n")[:5]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    # header, image 1, a stray JSON list, non-UTF-8 bytes instead of image 2, a non-record instead of image 3, image 4
    (damaged / "records.rank0.jsonl").write_bytes(b"\n".join([header, r1, GARBAGE[0], GARBAGE[1], GARBAGE[2], r4, b""]))
    lost = [json.loads(r)["image_id"] for r in (r2, r3)]
    with caplog.at_level(logging.WARNING, logger="benchmark.records"):
        again = run_with_overrides(args, damaged)
    assert f"{damaged / 'records.rank0.jsonl'}: line(s) 3, 4, 5 are damaged" in caplog.text
    assert again.payload["results"] == fresh.payload["results"]
    # the two valid records were kept, only the two lost images were computed again
    kept = _image_lines(damaged / "records.rank0.jsonl")
    assert [r["image_id"] for r in kept] == [json.loads(r1)["image_id"], json.loads(r4)["image_id"]] + lost
    assert (damaged / "records.rank0.jsonl.corrupt").read_bytes() == b"\n".join(GARBAGE) + b"\n"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="benchmark.records"):
        run_with_overrides(args, damaged)  # the file is clean now
    assert "damaged" not in caplog.text and len(_image_lines(damaged / "records.rank0.jsonl")) == 4


@pytest.mark.parametrize("damage", ["middle", "tail"])
def test_damaged_file_is_rewritten_when_no_image_needs_recomputing(tmp_path, caplog, damage):
    """Leftover item 4: with every image recorded, the damaged file was never rewritten and
    every later run repeated the warning."""
    args = _predictions_run(tmp_path)
    fresh = run_with_overrides(args, tmp_path / "run")
    records = tmp_path / "run" / "records.rank0.jsonl"
    lines = records.read_bytes().split(b"\n")
    if damage == "middle":  # garbage between valid records (every image keeps its record)
        records.write_bytes(b"\n".join(lines[:3] + GARBAGE + lines[3:]))
    else:  # a partial duplicate record, cut mid-line
        records.write_bytes(records.read_bytes() + lines[2][:25])
    with caplog.at_level(logging.WARNING, logger="benchmark.records"):
        again = run_with_overrides(args, tmp_path / "run")
    assert again.passes_this_run == 0 and again.payload["results"] == fresh.payload["results"]
    assert ("line(s) 4, 5, 6 are damaged" if damage == "middle" else "truncated last record") in caplog.text
    assert records.read_bytes() == b"\n".join(lines)  # every valid record kept, in order, nothing else
    corrupt = records.with_name(records.name + ".corrupt")
    assert corrupt.read_bytes() == b"\n".join(GARBAGE) + b"\n" if damage == "middle" else not corrupt.exists()
    assert not list(records.parent.glob("*.tmp*"))  # atomic: no temporary file left behind
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="benchmark.records"):
        run_with_overrides(args, tmp_path / "run")
    assert caplog.text == ""


def test_valid_last_record_without_its_newline_is_kept(tmp_path):
    from benchmark.records import RecordStore

    args = _predictions_run(tmp_path)
    run_with_overrides(args, tmp_path / "run")
    records = tmp_path / "run" / "records.rank0.jsonl"
    whole = records.read_bytes()
    records.write_bytes(whole[:-1] + b"\n" + b"[1]" + b"\n" + whole.split(b"\n")[1])  # garbage, then a record cut before its newline
    header = json.loads(whole.split(b"\n")[0])["fingerprint"]
    store = RecordStore(tmp_path / "run", header)
    assert len(store.load_all()) == 4
    store.open()
    store.close()
    assert records.read_bytes() == whole + whole.split(b"\n")[1] + b"\n"


def test_damaged_header_is_refused_naming_the_file(tmp_path):
    args = _predictions_run(tmp_path)
    run_with_overrides(args, tmp_path / "run")
    records = tmp_path / "run" / "records.rank0.jsonl"
    lines = records.read_bytes().split(b"\n")
    records.write_bytes(b"\n".join([lines[0][:20]] + lines[1:]))
    with pytest.raises(RunMismatchError, match=rf"{records}: the header line is damaged"):
        run_with_overrides(args, tmp_path / "run")


def test_run_killed_while_writing_its_header_starts_cleanly(tmp_path):
    args = _predictions_run(tmp_path)
    run_with_overrides(args, tmp_path / "fresh")
    header = (tmp_path / "fresh" / "records.rank0.jsonl").read_bytes().split(b"\n")[0]
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "records.rank0.jsonl").write_bytes(header[: len(header) // 2])
    out = run_with_overrides(args, tmp_path / "killed")
    assert out.payload["n_images"] == 4
    lines = (tmp_path / "killed" / "records.rank0.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "header" and len(lines) == 5


def test_disk_full_on_the_records_file_names_it(tmp_path):
    """A real ENOSPC from the kernel: /dev/full fails every write (never read it: it is endless)."""
    from benchmark.records import ImageRecord, RecordStore

    if not Path("/dev/full").exists():
        pytest.skip("/dev/full (a device whose writes fail with ENOSPC) is not available")
    store = RecordStore(tmp_path, {"a": 1})
    store.path.symlink_to("/dev/full")
    store.open()  # writes nothing yet: the file is created by the first record
    with pytest.raises(FileWriteError, match=rf"no space left on the file system holding {store.path} while writing records file") as err:
        store.append(ImageRecord("img0", "ok"))  # writes the header, then the record
    assert err.value.errno == errno.ENOSPC and err.value.path == str(store.path)
    with pytest.raises(FileWriteError, match=rf"holding {store.path}"):
        store.close()  # the buffered header fails again: still named


def test_disk_full_during_a_run_names_the_records_file(tmp_path, monkeypatch):
    import os

    args = _predictions_run(tmp_path)
    run_with_overrides(args + ["dataset.limit=3"], tmp_path / "run")  # then the 4th image hits a full disk
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("records.rank0.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(FileWriteError, match=rf"holding {tmp_path / 'run' / 'records.rank0.jsonl'} while writing records file \(\[Errno 28\]"):
        run_with_overrides(args, tmp_path / "run")


def test_disk_full_on_the_results_names_the_file_and_the_rerun_resumes(tmp_path, monkeypatch):
    import benchmark.fileio as fileio

    args = _predictions_run(tmp_path)

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "_sync", full)
    with pytest.raises(FileWriteError, match=rf"holding {tmp_path / 'run' / 'metrics.json'} .*\[Errno 28\]"):
        run_with_overrides(args, tmp_path / "run")
    assert not list((tmp_path / "run").glob(".metrics.json.*.tmp"))  # the temporary file is removed
    monkeypatch.undo()
    records = tmp_path / "run" / "records.rank0.jsonl"
    before = records.read_bytes()
    out = run_with_overrides(args, tmp_path / "run")
    assert out.payload["n_images"] == 4 and records.read_bytes() == before  # nothing recomputed


def test_atomic_write_error_names_the_target(tmp_path, monkeypatch):
    import benchmark.fileio as fileio

    def failing(path):
        raise OSError(errno.EIO, "Input/output error")  # as write()/fsync() raise it: no file name

    monkeypatch.setattr(fileio, "_sync", failing)
    target = tmp_path / "out.json"
    with pytest.raises(FileWriteError, match=rf"cannot write file at {target}: \[Errno 5\] Input/output error"):
        atomic_write_text(target, "{}")
    assert not list(tmp_path.iterdir())
