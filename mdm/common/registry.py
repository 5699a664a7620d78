"""Registries: the named things of one kind that a config key chooses between (pretraining
objectives, pretraining pools, labeled sources, fine-tuning networks, study methods). Each registry
is created and filled by the module that owns its kind, next to the code it names, so a new one is
one file plus one ``register`` call:

    OBJECTIVES = Registry("objectives", "diffusion.objective", "objective")
    OBJECTIVES.register("mdm", ObjectiveSpec(...))

A config key that names registered things declares the registries it draws from (``config.key(...,
registries=("objectives",))``); ``config_checks.validate`` checks its value against them once their
owners have been imported (every entry point imports them all: ``mdm.registries``), and a lookup
(``OBJECTIVES[name]``) always refuses an unknown name with a ``ConfigError`` that names the key and
the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_BY_NAME: dict[str, Registry] = {}


class Registry(Generic[T]):
    """``name -> record`` in registration order. ``name``: the registry's own name (what config keys
    refer to); ``key``: the config key that chooses from it (named in errors); ``what``: a word for
    one record; ``derive``: records made from other registries (``() -> {name: record}``, asked at
    every lookup, so what registers later is seen), listed before the registered ones; a registered
    record replaces a derived one of the same name (in the derived one's place)."""

    def __init__(self, name: str, key: str, what: str,
                 derive: Callable[[], dict[str, T]] | None = None):
        if name in _BY_NAME:
            raise ValueError(f"registry {name!r} exists twice")
        self.name, self.key, self.what, self._derive = name, key, what, derive
        self._records: dict[str, T] = {}
        _BY_NAME[name] = self

    def _all(self) -> dict[str, T]:
        return {**self._derive(), **self._records} if self._derive else self._records

    def register(self, name: str, record: T) -> T:
        """Add ``record`` under ``name`` (a name is registered once); returns ``record``."""
        if name in self._records:
            raise ValueError(f"{self.what} {name!r} is registered twice in {self.name}")
        self._records[name] = record
        return record

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's toy registration)."""
        if name not in self._records:
            raise ValueError(f"{self.what} {name!r} is not registered in {self.name}"
                             + (" (it is derived from other registries)" if name in self else ""))
        del self._records[name]

    def __getitem__(self, name: str) -> T:
        records = self._all()
        try:
            return records[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"{self.key}: unknown {self.what} {name!r} (known: {', '.join(self)})") from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._all()
        except TypeError:  # an unhashable name
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def items(self):
        return self._all().items()


def registry(name: str) -> Registry | None:
    """The registry called ``name``, or ``None`` while its owning module has not been imported."""
    return _BY_NAME.get(name)
