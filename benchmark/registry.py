"""Named registries of plugins (methods, metrics, datasets) with "did you mean" errors.

Modelled on lm-evaluation-harness' registry: plugins register under a name at import
time; looking up an unknown name fails with the closest valid names. Third-party methods
are found through the ``diffattn_seg.methods`` entry-point group
(:func:`discover_method_plugins`; wired into ``methods.METHODS`` by :mod:`methods.plugins`).
"""
from __future__ import annotations

import difflib
import functools
import logging
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Dict, Generic, Iterable, List, Mapping, Set, Tuple, TypeVar

log = logging.getLogger("benchmark.plugins")

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a ' Did you mean ...?' suffix (empty when nothing is close)."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the valid choices."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}. Valid choices: {', '.join(sorted(self._items))}."
                + did_you_mean(name, self._items)
            )
        return self._items[name]

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


# ------------------------------------------------------------------ entry-point plugins
#: entry-point group third-party methods register under
ENTRY_POINT_GROUP = "diffattn_seg.methods"


@dataclass(frozen=True)
class MethodPlugin:
    """One third-party method declared by a ``diffattn_seg.methods`` entry point."""

    name: str
    #: "module:Class", as ``methods.METHODS`` holds built-ins
    target: str
    #: distribution that declares the entry point ("name version"), for messages
    dist: str


_WARNED: Set[str] = set()


def warn_once(message: str) -> None:
    """Log a plugin problem once per process (discovery runs at every compose)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def _dist_label(entry: Any) -> str:
    dist = getattr(entry, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


@functools.lru_cache(maxsize=4)
def _entry_points(path: Tuple[str, ...]) -> Tuple[Any, ...]:
    # keyed on sys.path: every config composition asks, and a scan of the installed
    # distributions takes tens of ms; forget_entry_points() clears it after an install
    return tuple(sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name))


def forget_entry_points() -> None:
    """Scan the installed distributions again at the next discovery (after pip install)."""
    _entry_points.cache_clear()


def discover_method_plugins(builtin: Mapping[str, str]) -> Dict[str, MethodPlugin]:
    """The usable entry points of :data:`ENTRY_POINT_GROUP`, by method name (sorted)."""
    found: Dict[str, MethodPlugin] = {}
    for entry in _entry_points(tuple(sys.path)):
        where = f"entry point {entry.name!r} = {entry.value!r} of {_dist_label(entry)} (group {ENTRY_POINT_GROUP!r})"
        if entry.name in builtin:
            warn_once(f"{where} ignored: {entry.name!r} is a built-in method")
            continue
        if entry.name in found:
            warn_once(f"{where} ignored: {entry.name!r} is already registered by {found[entry.name].dist}")
            continue
        module, _, attr = entry.value.partition(":")
        if not module or not attr or " " in entry.value:
            warn_once(f"{where} ignored: expected 'module:Class'")
            continue
        found[entry.name] = MethodPlugin(entry.name, entry.value, _dist_label(entry))
    return found
