"""Allow-lists for the types an adapter codec rebuilds from journaled data.

A codec that keeps a value's class in the journal (``"<module>:<qualname>"``) must not let
the journal choose what to import or construct: anyone who can write Redis could then
make a worker import a module of their choice (running its top-level code) or build any
class. Codecs look names up here instead: a name resolves only to a class the code put on
the allow-list, or to a class of an already imported module under one of a few trusted
data-type packages, found through the module's ``__dict__`` (no import, no module
``__getattr__``, nothing runs).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any


def type_path(cls: type) -> str:
    """``"<module>:<qualname>"``: how codecs name a class in the journal."""
    return f"{cls.__module__}:{cls.__qualname__}"


def allow_map(types: Iterable[type]) -> dict[str, type]:
    """Classes by their :func:`type_path`."""
    return {type_path(t): t for t in types}


def loaded_class(path: str, packages: tuple[str, ...]) -> type | None:
    """The class ``path`` names if its module is under ``packages`` and already imported.

    Walks the module's and classes' ``__dict__`` only, and accepts the result only when it
    is a class whose own module and qualified name are exactly ``path``: an attribute that
    is a re-exported function (``os.system``) or a class from elsewhere does not pass.
    """
    module, _, qualname = path.partition(":")
    if not qualname or not (module + ".").startswith(packages):
        return None
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", None)
        if not isinstance(namespace, Mapping):
            return None
        obj = namespace.get(part)
    if isinstance(obj, type) and obj.__module__ == module and obj.__qualname__ == qualname:
        return obj
    return None
