"""A module no worker may import because a journal or checkpoint names it.

Importing it (its top-level code running) is what an attacker who writes Redis would get
from a decoder that imports modules named in stored data. It records the import in the file
named by ``STALWART_TEST_IMPORT_MARKER`` (set only in the workers of the tests that look),
and offers the classes a crafted entry names: a pydantic model and a dataclass, both of
which an unguarded decoder would happily build.
"""

from __future__ import annotations

import dataclasses
import os

from pydantic import BaseModel

MARKER_ENV = "STALWART_TEST_IMPORT_MARKER"

if path := os.environ.get(MARKER_ENV):
    with open(path, "a") as f:
        f.write(f"{__name__} imported in pid {os.getpid()}\n")


class Evil(BaseModel):
    """A harmless-looking model in a module whose import has an effect."""

    x: int = 0


@dataclasses.dataclass
class EvilState:
    """The dataclass form, for serializers that build dataclasses."""

    x: int = 0
