"""Record classes: what the broker, the planner and the site cache expect of a dataclass."""

from __future__ import annotations

import copy
import pickle
from typing import ClassVar

import pytest

from gpuhub.record import Factory, Record


class Point(Record):
    KIND: ClassVar[str] = "point"  # not a field
    x: int
    y: int = 0
    tags: list[str] = Factory(list)


class Mutable(Record, frozen=False):
    name: str
    items: list[int] = Factory(list)


class Point3(Point):
    z: int = 0


def test_fields_by_position_or_keyword_with_defaults_made_afresh() -> None:
    assert Point._fields == ("x", "y", "tags") and Point3._fields == ("x", "y", "tags", "z")
    a, b = Point(1), Point(x=1)
    assert (a.x, a.y, a.tags) == (1, 0, []) and a == b and a.tags is not b.tags
    assert Point(1, 2, ["t"]) == Point(y=2, x=1, tags=["t"]) != Point(1, 3)
    assert Point3(1, z=5).as_dict() == {"x": 1, "y": 0, "tags": [], "z": 5}
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[])"
    assert Point(1) != Point3(1)  # another class is never equal, as with dataclasses


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Point(), "missing field 'x'"),
    (lambda: Point(1, 2, [], 4), "3 fields, 4 values given"),
    (lambda: Point(1, x=2), "given twice: x"),
    (lambda: Point(1, colour="red"), "unknown field"),
])
def test_wrong_fields_are_refused(make, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        make()


def test_frozen_unless_declared_mutable() -> None:
    point = Point(1)
    with pytest.raises(AttributeError, match="frozen"):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del point.y
    assert hash(Point(1, 2, ("t",))) == hash(Point(1, 2, ("t",)))  # frozen: hashed by its fields
    row = Mutable("a")
    row.name = "b"
    row.items.append(1)
    assert row == Mutable("b", [1])
    with pytest.raises(TypeError, match="unhashable"):
        hash(row)


def test_copies_and_pickles_keep_every_field() -> None:
    point = Point(1, 2, ["t"])
    assert pickle.loads(pickle.dumps(point)) == point == copy.deepcopy(point)
    changed = type(point)(**{**point.__dict__, "y": 5})  # how the broker copies one with a field changed
    assert changed == Point(1, 5, ["t"])
