"""Named registries of plugins (methods, metrics, datasets) with "did you mean" errors.

Modelled on lm-evaluation-harness' registry: plugins register under a name at import
time; looking up an unknown name fails with the closest valid names.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterable, List, TypeVar

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
