"""Errors of the dataset layer: each names the path it expected and where the data comes from."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

#: every module of the dataset layer logs here (count mismatches, unmatched files, ...)
log = logging.getLogger("benchmark.data")

README = "datasets/README.md"

PathLike = Union[str, Path]


def readme_hint(section: str) -> str:
    return (
        f"See {README}, section '{section}', for where the dataset comes from and the "
        "folder tree the harness reads."
    )


# The exceptions below take their message as the only required argument so that they
# keep their type when a DataLoader worker re-raises them in the main process
# (torch rebuilds worker exceptions as ``type(message)``); ``path`` is kept as an
# attribute rather than OSError's ``filename``, which would rewrite the message.


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's root, split file or image / label folder does not exist."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        super().__init__(message)
        self.path = None if path is None else str(path)

    @classmethod
    def expected(cls, what: str, path: PathLike, section: str, detail: str = "") -> "DatasetNotFoundError":
        message = f"{what} not found: {path}. " + (detail + " " if detail else "") + readme_hint(section)
        return cls(message, path)

    def __reduce__(self):
        return (type(self), (str(self), self.path))


class DatasetFileError(OSError):
    """One image's file is missing, unreadable, corrupt or holds invalid values."""

    def __init__(self, message: str, path: Optional[PathLike] = None, image_id: Optional[str] = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.image_id = image_id

    def __reduce__(self):
        return (type(self), (str(self), self.path, self.image_id))


class MissingFileError(DatasetFileError, FileNotFoundError):
    """An image or label file listed by the split does not exist."""


class InvalidLabelError(DatasetFileError):
    """A label file holds values the dataset's decoding does not define."""


def require_dir(path: Path, what: str, section: str) -> Path:
    """``path`` if it is a folder, else DatasetNotFoundError naming ``what`` and the README section."""
    if not path.is_dir():
        raise DatasetNotFoundError.expected(what, path, section)
    return path
