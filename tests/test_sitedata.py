"""The plain site classes mirror the pydantic models exactly, and the cache keeps them."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gpuhub import registry, site, sitedata


def _models() -> list[type[BaseModel]]:
    return [obj for obj in vars(site).values()
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == site.__name__
            and obj is not site.Strict]


def test_every_site_model_has_a_mirror_with_the_same_fields_and_defaults() -> None:
    models = _models()
    assert {m.__name__ for m in models} == set(sitedata.MIRRORS)
    for model in models:
        mirror = sitedata.MIRRORS[model.__name__]
        assert mirror._fields == tuple(model.model_fields), model.__name__
        empty = object()
        for name, info in model.model_fields.items():
            expected = info.default_factory() if info.default_factory else info.default
            got = getattr(mirror, name, empty)
            if expected is PydanticUndefined:  # required on both sides
                assert got is empty, f"{model.__name__}.{name} has a default in the mirror only"
                continue
            got = got.make() if isinstance(got, sitedata.Factory) else got
            assert _dump(got) == _dump(expected), f"{model.__name__}.{name}: {got!r} != {expected!r}"


def test_methods_and_properties_are_shared() -> None:
    for model in _models():
        mirror = sitedata.MIRRORS[model.__name__]
        public = {n for n in dir(model) if not n.startswith("_") and n not in dir(BaseModel)}
        assert public - set(model.model_fields) <= set(dir(mirror)), model.__name__


def _dump(value: Any) -> Any:
    """Models and mirrors alike as nested dicts of their fields."""
    if isinstance(value, BaseModel):
        return {"<type>": type(value).__name__, **{n: _dump(getattr(value, n)) for n in type(value).model_fields}}
    if isinstance(value, sitedata.Plain):
        return {"<type>": type(value).__name__, **{n: _dump(getattr(value, n)) for n in value._fields}}
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", registry.site_names())
def test_every_shipped_site_is_copied_whole(isolated: Any, name: str) -> None:
    model = registry.build_site(name, registry.site_sources(name))
    plain = sitedata.from_model(model)
    assert _dump(plain) == _dump(model)
    assert plain.connection is None or plain.connection.model_fields_set == model.connection.model_fields_set
    assert plain.partition_key() == model.partition_key()
    assert pickle.loads(pickle.dumps(plain)) == plain


def test_the_cache_keeps_plain_sites(isolated: Any) -> None:
    registry._MEMO.clear()
    loaded = registry.load_site("jean-zay")
    assert type(loaded) is sitedata.Site and type(loaded.connection) is sitedata.Connection
    assert b"pydantic" not in registry.validated()["jean-zay"].site  # unpickling needs no pydantic


def test_plain_sites_are_frozen_and_copy_like_models() -> None:
    host = sitedata.LabHost(name="gpu1")
    assert host.address == "gpu1" and sitedata.LabHost(name="gpu1", host="10.0.0.1").address == "10.0.0.1"
    with pytest.raises(AttributeError):
        host.name = "other"  # type: ignore[misc]
    conn = sitedata.Connection(host="a", port=22, model_fields_set=frozenset({"host", "port"}))
    moved = conn.model_copy(update={"host": "b", "user": "me"})
    assert (moved.host, moved.port, moved.user, conn.host) == ("b", 22, "me", "a")
    assert moved.model_fields_set == {"host", "port", "user"}  # as pydantic's model_copy
    assert moved == sitedata.Connection(host="b", port=22, user="me") and moved.host_key_fingerprints == {}
    with pytest.raises(AttributeError):
        moved.host = "c"  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown field"):
        conn.model_copy(update={"hots": "b"})
    with pytest.raises(TypeError, match="unknown field"):
        sitedata.LabHost(name="x", hots="typo")
    with pytest.raises(TypeError, match="missing field 'name'"):
        sitedata.LabHost()
    assert sitedata.Lab().hosts is not sitedata.Lab().hosts  # defaults made afresh
