"""Name -> object registries. Configs refer to registered names only; nothing is imported by string."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from raykd.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to callables, filled with the :meth:`register` decorator.

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("my_loss")
    ... def my_loss(student_out, teacher_out, batch, **kw): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        def deco(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._items:
            raise UserError(self.unknown_message(name, field))
        return self._items[name]

    def unknown_message(self, name: str, field: str | None = None) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(self._items))}"
        where = f"{field}: " if field else ""
        return f"{where}unknown {self.kind} {name!r}; {hint}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
