"""Credentials kept out of every message and log line: one helper for URLs, one for data.

:func:`mask_urls` masks the credentials of every URL in a text (``user:pass@``, a bare
``token@``, ``password=``-style query parameters), so lists of URLs and URLs inside error
messages are covered too. :func:`mask_secrets` masks values under secret-looking keys at any
depth of dicts, lists and tuples, and never raises: cycles, very deep data and odd types are
left as markers rather than crashing the log line that carries them.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

_SECRET_WORDS = r"password|passwd|pwd|secret|api[_\-]?key|token|authorization|credentials?|cookie"
# Ends with a secret word, in any case and separator style (api_key, X-Api-Key, accessToken).
_SECRET_KEY = re.compile(rf"({_SECRET_WORDS})$|^auth$", re.I)
# scheme://USERINFO@ — userinfo stops at whitespace, '/', quotes and brackets, and is greedy up
# to the last '@' before them, so an unencoded '@' inside a password is masked whole.
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.\-]*://)([^\s/'\"<>\[\]]+)@", re.I)
_QUERY_SECRET = re.compile(rf"([?&;](?:[a-z_\-]*(?:{_SECRET_WORDS})))=([^&#\s'\"]*)", re.I)
_MAX_DEPTH = 64


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _ = match.group(2).partition(":")
    # user:password@ keeps the user (useful to debug), a bare token@ is all secret.
    return f"{match.group(1)}{user}:{MASK}@" if sep else f"{match.group(1)}{MASK}@"


def mask_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it masked (``redis://:***@host``)."""
    if "://" not in text:
        return text
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _QUERY_SECRET.sub(rf"\1={MASK}", text)


_KEYS_SEEN: dict[str, bool] = {}
"""Answers of :func:`is_secret_key` by key: log lines and records use the same few keys."""
_KEYS_SEEN_MAX = 4096


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (``password``, ``api_key``, ``Authorization``...)."""
    if type(key) is not str:
        return isinstance(key, str) and _SECRET_KEY.search(key) is not None
    known = _KEYS_SEEN.get(key)
    if known is None:
        if len(_KEYS_SEEN) >= _KEYS_SEEN_MAX:  # keys of user data can be many: start over
            _KEYS_SEEN.clear()
        known = _KEYS_SEEN[key] = _SECRET_KEY.search(key) is not None
    return known


def mask_secrets(value: Any, *, _depth: int = 0, _path: frozenset[int] = frozenset()) -> Any:
    """A copy of ``value`` with secret-keyed values and URL credentials masked, at any depth.

    Dicts, lists, tuples and sets are copied; strings are passed through :func:`mask_urls`;
    other objects are returned as they are. A container met again inside itself becomes
    ``"<cycle>"``, and anything deeper than 64 levels ``"<too deep>"``.
    """
    if isinstance(value, str):
        return mask_urls(value)
    if not isinstance(value, dict | list | tuple | set | frozenset):
        return value
    if id(value) in _path:
        return "<cycle>"
    if _depth >= _MAX_DEPTH:
        return "<too deep>"
    path = _path | {id(value)}
    if isinstance(value, dict):
        return {
            k: MASK if is_secret_key(k) else mask_secrets(v, _depth=_depth + 1, _path=path)
            for k, v in value.items()
        }
    items = [mask_secrets(v, _depth=_depth + 1, _path=path) for v in value]
    if isinstance(value, list):
        return items
    if isinstance(value, tuple):
        return tuple(items)
    try:
        return type(value)(items)
    except TypeError:  # masked items that are no longer hashable
        return items
