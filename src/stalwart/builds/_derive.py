"""The default build id: a stable hash of the code of an app's agents."""

from __future__ import annotations

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


def _module_text(fn: Any) -> bytes:
    """The source of the module that defines ``fn`` (prompts and steps beside the agent
    function count), or its bytecode when the source is not available."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    try:
        if module is not None:
            return inspect.getsource(module).encode()
    except (OSError, TypeError):
        pass
    code = getattr(fn, "__code__", None)
    return _code_bytes(code) if isinstance(code, types.CodeType) else repr(fn).encode()


def derive_build(agents: Iterable[tuple[str, Any]]) -> str:
    """A 12-hex-digit build id from ``(agent name, agent function)`` pairs: unchanged code
    keeps its build across restarts and hosts; any edit of an agent's module makes a new one."""
    digest = hashlib.blake2b(digest_size=6)
    for name, fn in sorted(agents, key=lambda pair: pair[0]):
        digest.update(name.encode() + b"\0" + _module_text(fn) + b"\0")
    return digest.hexdigest()
