"""benchmark.fileio: atomic writes (temp file in the target folder, fsync, chmod, rename,
temp removed on error) and the one reader of line lists (class lists, split files)."""
import os
import stat

import pytest

from benchmark.data.io import read_split_ids
from benchmark.data.reference import read_class_list
from benchmark.fileio import FILE_MODE, atomic_path, atomic_write_bytes, atomic_write_text, read_lines


def _names(folder):
    return sorted(os.listdir(folder))


def test_atomic_write_text_and_bytes_replace_the_target_with_the_usual_mode(tmp_path):
    target = tmp_path / "metrics.json"
    old_umask = os.umask(0o077)  # mkstemp's 0600 must not leak into shared outputs
    try:
        atomic_write_text(target, "first\n")
        assert target.read_text(encoding="utf-8") == "first\n"
        atomic_write_bytes(target, "zweite Größe".encode())
    finally:
        os.umask(old_umask)
    assert target.read_bytes().decode("utf-8") == "zweite Größe"
    assert stat.S_IMODE(target.stat().st_mode) == FILE_MODE == 0o644
    atomic_write_bytes(target, b"x", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _names(tmp_path) == ["metrics.json"]  # no temporary file left behind


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path, error):
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    with pytest.raises(error), atomic_path(target) as temp:
        assert temp.parent == tmp_path and temp != target and temp.name.startswith(".mask.png.")
        temp.write_bytes(b"half written")
        raise error("writer failed")
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["mask.png"]


def test_failed_rename_removes_the_temp(tmp_path):
    target = tmp_path / "taken"
    (target / "child").mkdir(parents=True)  # os.replace cannot put a file over a non-empty folder
    with pytest.raises(OSError):
        atomic_write_text(target, "data")
    assert _names(tmp_path) == ["taken"] and _names(target) == ["child"]


def test_concurrent_writers_of_one_target_use_distinct_temps(tmp_path):
    # two generate jobs writing the same id: neither may clobber the other's half-written temp
    target = tmp_path / "a.jpg"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the outer block ends last: its rename wins
    assert _names(tmp_path) == ["a.jpg"]


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        atomic_write_text(tmp_path / "no_such_dir" / "f.txt", "x")


def test_line_readers(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("  dog \n\ncat\n  \npotted plant\ndog\n", encoding="utf-8")
    assert read_lines(path) == ["dog", "cat", "potted plant", "dog"]
    assert read_class_list(path) == ["dog", "cat", "potted plant", "dog"]  # file order: train-id order
    assert read_split_ids(path) == ["cat", "dog", "potted plant"]  # sorted, distinct
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=f"split file not found: {missing}"):
        read_split_ids(missing)
    with pytest.raises(FileNotFoundError, match=f"class list not found: {missing}"):
        read_lines(missing, "class list")
