"""Record classes declared like dataclasses, without what ``dataclasses`` costs at import.

A ``@dataclass`` writes its ``__init__``, ``__repr__``, ``__eq__`` and friends as source text and
compiles them when its module is imported: about a millisecond a class, at every start of every
command whose modules define one (a ``gpuhub plan`` loaded thirteen). A :class:`Record` subclass
only reads its field names from its annotations; the methods are shared.
"""

from __future__ import annotations

import inspect  # loaded by click already: free here
from collections.abc import Callable
from typing import Any, ClassVar

_MISSING = object()


class Factory:
    """A default made afresh for each instance (a list, a dict, a nested settings object)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


class Record:
    """Fields are the class annotations, in order (a base class's first); a class attribute is
    a field's default, a :class:`Factory` one made for each instance. Fields are given by
    position or keyword; instances compare and hash field by field and are frozen, unless the
    class is declared ``class Row(Record, frozen=False)`` (then, as a dataclass, unhashable)."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _field_set: ClassVar[frozenset[str]] = frozenset()
    _defaults: ClassVar[dict[str, Any]] = {}
    _frozen: ClassVar[bool] = True

    def __init_subclass__(cls, frozen: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = [name for name, kind in inspect.get_annotations(cls).items()  # its own, not its bases'
               if not str(kind).startswith("ClassVar")]
        cls._fields = (*cls._fields, *(name for name in own if name not in cls._fields))
        cls._field_set = frozenset(cls._fields)
        cls._defaults = {name: value for name in cls._fields
                         if (value := getattr(cls, name, _MISSING)) is not _MISSING}
        if frozen is not None:
            cls._frozen = frozen
        if not cls._frozen and "__hash__" not in cls.__dict__:
            cls.__hash__ = None  # type: ignore[assignment]  # equal when their fields are: must not be hashed

    def __init__(self, *args: Any, **values: Any) -> None:
        cls = type(self)
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}: {len(fields)} fields, {len(args)} values given")
        state = dict(zip(fields, args, strict=False))  # the first fields; defaults for the rest
        if values:
            if not cls._field_set.issuperset(values):
                unknown = ", ".join(repr(name) for name in values if name not in cls._field_set)
                raise TypeError(f"{cls.__name__}: unknown field(s) {unknown}")
            if args and not state.keys().isdisjoint(values):
                raise TypeError(f"{cls.__name__}: field(s) given twice: {', '.join(state.keys() & values.keys())}")
            state.update(values)
        if len(state) < len(fields):
            for name, default in cls._defaults.items():
                if name not in state:
                    state[name] = default.make() if type(default) is Factory else default
            if len(state) < len(fields):
                missing = next(name for name in fields if name not in state)
                raise TypeError(f"{cls.__name__}: missing field {missing!r}")
        self.__dict__.update(state)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")
        super().__delattr__(name)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, in order (values as they are, not copied)."""
        return {name: getattr(self, name) for name in self._fields}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._fields)})"
