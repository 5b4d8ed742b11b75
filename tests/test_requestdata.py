"""The fast request path accepts only what the pydantic model accepts, and builds the same request."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from gpuhub.request import JobRequest
from gpuhub.requestdata import Request, build, plain, quick


def test_request_mirrors_the_model() -> None:
    assert Request._fields == tuple(JobRequest.model_fields)
    empty = Request()
    for name, info in JobRequest.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default
        assert default is not PydanticUndefined
        assert getattr(empty, name) == default, name


def _same_as_model(fields: dict[str, Any]) -> Request | None:
    """quick(fields), checked against the model: accepted only if the model accepts it, equal."""
    fast = quick(fields)
    try:
        model = JobRequest(**fields)
    except ValidationError:
        assert fast is None, f"the fast path accepted what the model refuses: {fields}"
        return None
    if fast is not None:
        assert fast == plain(model)
        assert fast.model_fields_set == model.model_fields_set
        assert fast.record() == model.model_dump(mode="json", exclude_defaults=True)
    return fast


GOOD = [
    {"command": ["python", "train.py", "--lr", "0.1"]},
    {"script": "echo hi\n", "name": "n" * 256},
    {"command": ["true"], "gpus": 16, "gpu_type": "a100", "time": "10h", "mem": "64G", "gpu_mem": "40G"},
    {"command": ["true"], "nodes": 2, "gpus_per_node": 4, "gpus": 8, "cpus_per_gpu": 10, "launcher": "srun"},
    {"command": ["true"], "env": {"SEED": "1", "_X": ""}, "workdir": "~/w", "requeue": True},
    {"command": ["true"], "array": "0-49%10", "dependency": "afterok:12:13", "project": "abc", "account": "a@b",
     "partition": "gpu_p13", "qos": "qos_gpu-t3", "directives": ["--hint=nomultithread"], "wait_for_gpus": 0},
    {"command": ["true"], "gpus": 0},
]
BAD = [
    {},
    {"command": ["true"], "script": "x"},
    {"command": ["a\0b"]},
    {"command": ["true"], "name": "n" * 257},
    {"command": ["true"], "gpus": -1},
    {"command": ["true"], "gpus": 0, "gpu_type": "a100"},
    {"command": ["true"], "gpus": 3, "nodes": 2, "gpus_per_node": 2},
    {"command": ["true"], "time": "forever"},
    {"command": ["true"], "time": "400d"},
    {"command": ["true"], "mem": "-1G"},
    {"command": ["true"], "env": {"1BAD": "x"}},
    {"command": ["true"], "env": {"A": "x\0"}},
    {"command": ["true"], "array": "5-1"},
    {"command": ["true"], "array": "0-99999999"},
    {"command": ["true"], "dependency": "after:x"},
    {"command": ["true"], "project": "a b"},
    {"command": ["true"], "directives": [" --x"]},
    {"command": ["true"], "launcher": "mpirun"},
    {"command": ["true"], "wait_for_gpus": 30 * 86400 + 1},
    {"command": ["true"], "unknown": 1},
]


@pytest.mark.parametrize("fields", GOOD)
def test_plain_values_take_the_fast_path(fields: dict[str, Any]) -> None:
    assert _same_as_model(fields) is not None


@pytest.mark.parametrize("fields", BAD)
def test_the_model_decides_every_error(fields: dict[str, Any]) -> None:
    assert quick(fields) is None
    with pytest.raises(ValidationError):
        build(fields)


_text = st.one_of(st.sampled_from(["", "a100", "abc", "2h", "90m", "64G", "0-9%2", "afterok:1", "~/x", "a b",
                                   "--x=1", "x\0", "0", "-1", "singleton", "none", "srun"]), st.text(max_size=12))
_number = st.one_of(st.integers(-2, 70), st.sampled_from([10**6, 2**63]), st.booleans(), _text)
_FIELD = {
    "command": st.lists(_text, max_size=3), "script": _text, "name": _text, "gpus": _number, "nodes": _number,
    "gpus_per_node": _number, "gpu_type": _text, "gpu_mem": _text, "cpus_per_gpu": _number, "mem": _text,
    "time": st.one_of(_text, _number), "launcher": _text, "requeue": st.one_of(st.booleans(), _number),
    "env": st.dictionaries(_text, _text, max_size=2), "workdir": _text, "array": _text, "dependency": _text,
    "project": _text, "account": _text, "partition": _text, "qos": _text,
    "directives": st.lists(_text, max_size=2), "wait_for_gpus": _number,
}


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.fixed_dictionaries({}, optional=_FIELD),  # type: ignore[arg-type]
                 st.fixed_dictionaries({"command": st.just(["true"])},  # type: ignore[arg-type]
                                       optional={k: v for k, v in _FIELD.items() if k != "command"})))
def test_fast_path_never_accepts_what_the_model_refuses(fields: dict[str, Any]) -> None:
    _same_as_model(fields)


@pytest.mark.parametrize("name", sorted(_FIELD))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_each_field_alone_is_decided_as_the_model_does(name: str, data: st.DataObject) -> None:
    fields = {"command": ["true"], name: data.draw(_FIELD[name])}
    _same_as_model(fields)
