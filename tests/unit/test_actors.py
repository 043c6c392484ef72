"""The pure parts of stalwart.actors: fingerprints, agent registration, step keys."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from stalwart.actors import App, RunContext, fingerprint
from stalwart.errors import (
    ConfigurationError,
    UnknownAgentError,
)


class _Opaque:
    """Something msgpack cannot encode, of a type other than ``object``."""


def test_fingerprint_same_name_and_args_same_hash() -> None:
    a = fingerprint("search", ("q", 3), {"limit": 10})
    b = fingerprint("search", ("q", 3), {"limit": 10})
    assert a == b
    assert isinstance(a, str) and len(a) == 24  # blake2b, 12 bytes, hex


def test_fingerprint_ignores_dict_key_order() -> None:
    a = fingerprint("t", ({"x": 1, "y": {"p": 1, "q": 2}},), {"a": 1, "b": 2})
    b = fingerprint("t", ({"y": {"q": 2, "p": 1}, "x": 1},), {"b": 2, "a": 1})
    assert a == b


def test_fingerprint_different_args_or_name_differ() -> None:
    base = fingerprint("t", (1, 2), {})
    assert fingerprint("t", (1, 3), {}) != base
    assert fingerprint("t", (1, 2), {"k": 1}) != base
    assert fingerprint("u", (1, 2), {}) != base
    assert fingerprint("t", (2, 1), {}) != base


def test_fingerprint_unencodable_objects_count_by_type_only() -> None:
    a = fingerprint("t", (object(),), {"client": object()})
    b = fingerprint("t", (object(),), {"client": object()})
    assert a == b
    # ...but the type does take part.
    assert fingerprint("t", (_Opaque(),), {"client": object()}) != a


class Query(msgspec.Struct):
    text: str
    limit: int = 3


async def _typed_agent(ctx: RunContext, q: Query) -> list[str]:
    return [q.text]


async def _untyped_agent(ctx, inp):  # type: ignore[no-untyped-def]
    return inp


def test_app_refuses_sync_function() -> None:
    app = App("t")

    def sync_agent(ctx: RunContext, inp: int) -> int:
        return inp

    with pytest.raises(ConfigurationError, match="async"):
        app.register("sync", sync_agent)  # type: ignore[arg-type]
    assert "sync" not in app.agents


@pytest.mark.parametrize("arity", [0, 1, 3])
def test_app_refuses_wrong_arity(arity: int) -> None:
    app = App("t")
    params = ", ".join(f"p{i}" for i in range(arity))
    scope: dict[str, Any] = {}
    exec(f"async def agent({params}):\n    return None", scope)
    with pytest.raises(ConfigurationError, match=rf"takes {arity} parameter"):
        app.register("bad", scope["agent"])


def test_app_refuses_duplicate_name() -> None:
    app = App("t")
    app.register("dup", _untyped_agent)
    with pytest.raises(ConfigurationError, match="twice"):
        app.register("dup", _typed_agent)
    assert app.get("dup").fn is _untyped_agent


def test_app_refuses_invalid_agent_name() -> None:
    with pytest.raises(ConfigurationError, match="invalid agent name"):
        App("t").register("a.b", _untyped_agent)


def test_app_takes_input_type_from_annotation() -> None:
    app = App("t")

    decorated = app.agent("typed")(_typed_agent)
    assert decorated is _typed_agent
    app.agent()(_untyped_agent)
    spec = app.get("typed")
    assert spec.name == "typed"
    assert spec.input_type is Query
    assert spec.result_type == list[str]
    untyped = app.get("_untyped_agent")
    assert untyped.input_type is Any
    assert untyped.result_type is Any


def test_app_get_unknown_agent_lists_registered_names() -> None:
    app = App("myapp")
    app.register("beta", _untyped_agent)
    app.register("alpha", _typed_agent)
    with pytest.raises(UnknownAgentError) as info:
        app.get("nope")
    msg = str(info.value)
    assert "nope" in msg
    assert "alpha, beta" in msg
    assert "myapp" in msg


def test_app_get_unknown_agent_of_empty_app() -> None:
    with pytest.raises(UnknownAgentError, match="none"):
        App("empty").get("nope")


def test_run_context_next_key_scheme() -> None:
    ctx = RunContext(object())  # type: ignore[arg-type]  # next_key never touches the actor
    assert [ctx.next_key("a") for _ in range(3)] == ["a", "a#2", "a#3"]
    assert ctx.next_key("b") == "b"
    assert ctx.next_key("a") == "a#4"


def test_run_context_scoped_prefixes_keys() -> None:
    ctx = RunContext(object())  # type: ignore[arg-type]
    ctx.next_key("a")
    sub = ctx.scoped("sub")
    assert [sub.next_key("a") for _ in range(2)] == ["sub/a", "sub/a#2"]
    assert sub.scoped("inner").next_key("x") == "sub/inner/x"
    # The parent's counters are its own.
    assert ctx.next_key("a") == "a#2"
