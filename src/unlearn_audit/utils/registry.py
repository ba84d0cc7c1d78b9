"""One registry type for every kind of plug-in: unlearning losses and regularizers, attack families,
benchmarks, quantization backends and scheme families (after lm-evaluation-harness's registry).

A plug-in registers itself by name with the registry's decorator in its own file; a second plug-in under
the same name is an error, not a silent replacement. A registry whose plug-ins live in a package finds them
itself: on first use it imports every module of that package whose source calls the decorator (`marker`),
so adding a method, attack or benchmark is one file, with no import list to keep.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from ..errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plug-in of one kind (`kind` names it in errors: "unknown attack family 'x'; choose ...")."""

    def __init__(self, kind: str, package: str | None = None, marker: str | None = None):
        self.kind, self.package, self.marker = kind, package, marker
        self._items: dict[str, T] = {}
        self._discovered = package is None

    # -------------------------------------------------------------------------------------- registering
    def add(self, name: str, item: T) -> T:
        """Register `item` as `name`; the same definition again (a module imported twice) replaces itself."""
        old = self._items.get(name)
        if old is not None and origin(old) != origin(item):
            raise ValueError(f"two {self.kind}s are registered as '{name}': {origin(old)} and {origin(item)}")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda item: self.add(name, item)

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    # -------------------------------------------------------------------------------------- reading
    def discover(self) -> None:
        """Import the package's modules that register plug-ins here (once)."""
        if self._discovered:
            return
        self._discovered = True
        folder = Path(importlib.import_module(self.package).__file__).parent
        for path in sorted(folder.glob("*.py")):
            if path.stem != "__init__" and (self.marker is None or self.marker in path.read_text(encoding="utf-8")):
                importlib.import_module(f"{self.package}.{path.stem}")

    def get(self, name: str) -> T:
        """The plug-in named `name`; an unknown name is a one-line user error listing the known ones."""
        self.discover()
        if name not in self._items:
            raise UserError(f"unknown {self.kind} '{name}'; choose one of {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """The names in alphabetical order (not registration order, which depends on what was imported first)."""
        self.discover()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._items[name]) for name in self.names()]

    def values(self) -> list[T]:
        return [self._items[name] for name in self.names()]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __getitem__(self, name: str) -> T:
        self.discover()
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def origin(item) -> str:
    """Where a plug-in is defined (module and qualified name; an instance: its class's)."""
    obj = item if hasattr(item, "__qualname__") else type(item)
    fn = getattr(item, "fn", None)  # a record wrapping a function (unlearning losses)
    if fn is not None and hasattr(fn, "__qualname__"):
        obj = fn
    return f"{obj.__module__}.{obj.__qualname__}"
