"""``Registry``: things a config names by a short string (algorithms, models, data sets)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from keras_sparse.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object map whose lookup of an unknown name is a one-line ``ConfigError`` that
    lists the known names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Registers ``entry`` under ``name``; returns it."""
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator: ``@MODELS.register("lenet5")``."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry registered as ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"Unknown {self.kind} {name!r}: use one of {sorted(self._entries)}.") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
