"""Small file helpers shared by the harness: atomic writes and reading line lists.

An atomic write goes to a fresh temporary file in the target's own directory (so the
rename stays on one file system), is flushed to disk, given the usual file mode and then
renamed over the target with ``os.replace``: a reader sees the old file or the complete
new one, never a partial one, and two processes writing the same target at once each
use their own temporary name (the last rename wins). The temporary file is removed on
any error, KeyboardInterrupt included.

A write that fails (a full disk above all: ``[Errno 28]`` from ``write``/``fsync`` carries
no file name) is re-raised by :func:`naming_path` as :class:`FileWriteError`, whose
message names the file, what it is and, for a full disk or quota, what to do.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Union

PathLike = Union[str, Path]

#: mode of written files: mkstemp creates 0600 files, shared outputs need the usual mode
FILE_MODE = 0o644

#: errno values of a file system with no room left (full disk, exhausted quota)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class FileWriteError(OSError):
    """Writing ``path`` failed; the message names the file (``errno`` is the original one)."""

    def __init__(self, message: str, path: Optional[PathLike] = None, code: Optional[int] = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.errno = code

    @property
    def user_error(self) -> bool:
        """A full disk / quota, a read-only or forbidden folder is the user's to fix: the
        message alone is printed (exit code 2), not a traceback (``config.is_user_error``)."""
        return self.errno in NO_SPACE + (errno.EACCES, errno.EPERM, errno.EROFS)

    def __reduce__(self):
        return (type(self), (str(self), self.path, self.errno))


@contextlib.contextmanager
def naming_path(path: PathLike, what: str = "file") -> Iterator[None]:
    """Re-raise an OSError of the block that does not name its file (or a full disk / quota,
    whatever it names) as FileWriteError naming ``what`` and ``path``; others (e.g. a
    FileNotFoundError naming the missing path) pass unchanged."""
    try:
        yield
    except FileWriteError:
        raise
    except OSError as err:
        if err.errno not in NO_SPACE and err.filename is not None:
            raise
        reason = f"[Errno {err.errno}] {err.strerror or err}"
        if err.errno in NO_SPACE:
            message = (
                f"no space left on the file system holding {path} while writing {what} ({reason}); free space "
                "there or write elsewhere (hydra.run.dir=..., cache.dir=...); a rerun resumes from the records "
                "already written"
            )
        else:
            message = f"cannot write {what} at {path}: {reason}"
        raise FileWriteError(message, path, err.errno) from err


@contextlib.contextmanager
def atomic_path(target: PathLike, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; when the block ends without error the
    file written there is synced, chmod-ed to ``mode`` and renamed to ``target``.

    For writers that want a path rather than bytes (``PIL.Image.save``, ``to_parquet``)::

        with atomic_path(out / "mask.png") as tmp:
            image.save(tmp, format="PNG")  # name the format: the suffix is .tmp
    """
    target = Path(target)
    with naming_path(target):
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(handle)
    temp = Path(temp_name)
    try:
        with naming_path(target):
            yield temp
            _sync(temp)
            os.chmod(temp, mode)
            os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path, mode) as temp:
        temp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str, mode: int = FILE_MODE) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see the module docstring)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def read_lines(path: PathLike, what: str = "file") -> List[str]:
    """The stripped, non-empty lines of the UTF-8 text file ``path`` in file order;
    FileNotFoundError "<what> not found: <path>" when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _sync(path: Path) -> None:
    # the data must be on disk before the rename makes it visible under the real name
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
