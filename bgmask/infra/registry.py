"""A registry of classes by name: the one shape shared by the benchmark and strategy axes (``@register``, ``get``,
``names``), as DomainBed keeps its ``ALGORITHMS`` and ``DATASETS``."""

from __future__ import annotations

from typing import Generic, TypeVar

from bgmask.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes with a ``name`` attribute, in registration order.

    Args:
        kind: what an entry is, for messages ("masking strategy", "benchmark").
        unknown: how an unknown name is reported, with ``{name}``, ``{known}`` (the registered names) and ``{hint}``
            (" Did you mean ...?" or nothing).
    """

    def __init__(self, kind: str, unknown: str):
        self.kind, self.unknown = kind, unknown
        self._entries: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: make ``cls`` known by its ``name``; another class under a taken name is refused."""
        known = self._entries.get(cls.name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"{self.kind} name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
        self._entries[cls.name] = cls
        return cls

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown.format(name=name, known=", ".join(self._entries),
                                                  hint=did_you_mean(name, self._entries))) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def find(self, name: str) -> type[T] | None:
        return self._entries.get(name)
