"""The default build id: a stable hash of the code of an app's agents."""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable


def _code_bytes(code: types.CodeType) -> bytes:
    # Bytecode, names and constants (nested functions too), without line numbers or file
    # paths: the same code at another path or line hashes the same.
    parts = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        parts.append(
            _code_bytes(const) if isinstance(const, types.CodeType) else repr(const).encode()
        )
    return b"\0".join(parts)


def _unwrap(fn: Any) -> Any:
    """The function behind partials and decorators (``functools.wraps``)."""
    for _ in range(32):  # a cycle of __wrapped__ must not hang a worker's start
        inner = getattr(fn, "func", None) if isinstance(fn, functools.partial) else None
        inner = inner or getattr(fn, "__wrapped__", None)
        if inner is None:
            return fn
        fn = inner
    return fn


def _module_text(fn: Any) -> bytes:
    """The source of the module that defines ``fn`` (prompts and steps beside the agent
    function count), else its bytecode, else its type's name: never anything that differs
    between processes running the same code (such as a repr with a memory address)."""
    fn = _unwrap(fn)
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    try:
        if module is not None:
            return inspect.getsource(module).encode()
    except (OSError, TypeError):
        pass
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        return _code_bytes(code)
    return f"{type(fn).__module__}.{type(fn).__qualname__}".encode()


def derive_build(agents: Iterable[tuple[str, Any]]) -> str:
    """A 12-hex-digit build id from ``(agent name, agent function)`` pairs: unchanged code
    keeps its build across restarts and hosts; any edit of an agent's module makes a new one."""
    digest = hashlib.blake2b(digest_size=6)
    for name, fn in sorted(agents, key=lambda pair: pair[0]):
        digest.update(name.encode() + b"\0" + _module_text(fn) + b"\0")
    return digest.hexdigest()
