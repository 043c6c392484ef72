"""Patch markers: how ``ctx.patched`` decides between a run's old and new code path.

A patch marker is a journaled step of kind ``patch`` (key ``patch:<change-id>``, result
``True``). The rule, decided where the code calls ``ctx.patched``:

- the marker is journaled: the run took the new path here before, it does again (True);
- it is not, and the journal already holds work past this point (outcomes the code has not
  asked for again, waits or at-most-once attempts that are still open, or the run's end):
  the run was written by code without the patch and went past this point on the old path
  (False, not journaled: the evidence stays in the journal, so every replay agrees);
- it is not, and nothing is journaled past this point: the run is live here, so the marker
  is journaled and the new path taken (True).

``deprecate_patch`` keeps replaying runs that recorded the marker, refuses runs that took the
old path, and records a marker that code without any patch call may leave unasked.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from stalwart.actors._fingerprint import fingerprint
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from stalwart.actors._view import JournalView

PATCH_KIND = "patch"
"""The step kind of a patch marker in the journal and the history."""
DEPRECATED_SUFFIX = " (deprecated)"
"""Ends the step name of a marker recorded by ``deprecate_patch``: code may leave it unasked."""

_CHANGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")


def check_change_id(change_id: object) -> str:
    """``change_id`` if it is a usable change id, else a clear :class:`ConfigurationError`.

    1-128 characters, letters, digits and ``. _ : @ + -``, starting with a letter or digit: it
    becomes part of a step key (``/`` would make it look nested) and is shown in histories.
    """
    if not isinstance(change_id, str) or not _CHANGE_ID.fullmatch(change_id):
        raise ConfigurationError(
            f"patch change id must be 1-128 characters of letters, digits and . _ : @ + - "
            f"starting with a letter or digit; got {change_id!r}"
        )
    return change_id


def patch_key(scope: str, change_id: str) -> str:
    """The marker's step key (scoped like the steps around it; one marker per change id)."""
    return f"{scope}patch:{change_id}"


def patch_fp(change_id: str) -> str:
    """The marker's fingerprint: the change id only (``patched`` and ``deprecate_patch`` agree)."""
    return fingerprint(PATCH_KIND, change_id)


def went_past(view: JournalView) -> bool:
    """Whether the journal holds work beyond the point the code has reached.

    Journaled outcomes the code has not asked for again, waits and at-most-once or retried
    attempts without an outcome, or the run's end: all were written after this point by the
    code that ran before (offline replay of a finished run counts as past every point).
    """
    if view.finished is not None or view.unasked():
        return True
    return any(k not in view.done for k in (*view.waits, *view.intents, *view.attempts))


def is_tolerated(kind: str, name: str) -> bool:
    """Whether a journaled step may be left unasked: a marker of a deprecated patch."""
    return kind == PATCH_KIND and name.endswith(DEPRECATED_SUFFIX)
