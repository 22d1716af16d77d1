"""Name -> constructor registries, so configs pick components by name without if/elif chains."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from jaxalign.errors import JaxalignError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-mostly mapping whose unknown-name error lists the valid names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """Adds ``entry`` (or, without one, the decorated function) under ``name``; a name taken already is refused
        (a second module choosing the same name would otherwise replace the first silently)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        if entry is not None:
            self._entries[name] = entry
            return entry

        def decorator(fn: Callable) -> Callable:
            self._entries[name] = fn
            return fn

        return decorator

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise JaxalignError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
