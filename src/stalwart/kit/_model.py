"""Model steps: one journal form, one request-shape comparison, one non-determinism error.

A model step journals ``{"response": ..., "request": <shape>}``: the response, and what the
call offered the model apart from the conversation (model, tools, output type, a digest of
the instructions). The step's fingerprint covers the conversation; the shape is compared
here on every load, live and replayed, so a changed agent fails with a message that says
what changed instead of a bare fingerprint mismatch.

A request shape is a mapping of field names to plain values. How a field is compared
depends on its value: a list of names (``["search", "write"]``) or a mapping of names to
digests of their parameters (``{"search": "9f2c..."}``) lists the names gone and new (and
the ones whose parameters changed); a field in :data:`DIGEST_FIELDS` only says it changed;
any other value is shown as it was and as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stalwart.errors import NonDeterminismError
from stalwart.kit._steps import call_step

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from stalwart.actors import RunContext, StepSpec
    from stalwart.kit._steps import StepCall

DIGEST_FIELDS = frozenset({"instructions", "output_object", "system"})
"""Shape fields that hold a digest: a difference is reported without the values."""

_LABELS = {
    "model": "the model",
    "instructions": "the instructions",
    "system": "the system prompt",
    "tools": "the tools",
    "handoffs": "the handoffs",
    "output": "the output type",
    "output_mode": "the output type",
    "output_object": "the output type",
    "text_output": "the output type",
}


def _label(field: str) -> str:
    return _LABELS.get(field, f"the {field.replace('_', ' ')}")


def _names(value: Any) -> dict[str, Any] | None:
    """A names field as ``{name: digest}`` (a list has no digests), else None."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return dict.fromkeys(value, "")
    return None


def _names_change(label: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    gone = [n for n in old if n not in new]
    added = [n for n in new if n not in old]
    if gone or added:
        parts = [
            f"{', '.join(repr(n) for n in gone)} no longer offered" if gone else "",
            f"{', '.join(repr(n) for n in added)} newly offered" if added else "",
        ]
        return f"{label}: {', '.join(p for p in parts if p)} (renamed, removed or added)"
    changed = sorted(n for n in old if old[n] != new[n])
    if changed:
        return f"{label}: {', '.join(changed)} take other parameters now"
    return None


def shape_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a journaled request shape and the current one, in words.

    An empty list when they match. Fields present on one side only count as changed.
    """
    changes: list[str] = []
    for field in dict.fromkeys([*recorded, *current]):
        old, new = recorded.get(field), current.get(field)
        if old == new:
            continue
        label = _label(field)
        old_names, new_names = _names(old), _names(new)
        if old_names is not None and new_names is not None:
            change = _names_change(label, old_names, new_names)
        elif field in DIGEST_FIELDS:
            change = f"{label} changed"
        else:
            change = f"{label} was {old!r}, now {new!r}"
        if change is not None and change not in changes:
            changes.append(change)
    return changes


def nondeterminism(run_id: str, spec: StepSpec, changes: list[str]) -> NonDeterminismError:
    """The error a resumed run raises when its agent no longer makes the journaled request."""
    return NonDeterminismError(
        f"run {run_id!r}, step {spec.key!r} (model {spec.name!r}): the agent changed since "
        f"this run started: {'; '.join(changes)}. Deploy the change for new runs only, or "
        "fork the run from an earlier step."
    )


def model_record(response: Any, shape: Mapping[str, Any]) -> dict[str, Any]:
    """The journal form of a model step: the response and the request's shape.

    The response, never the conversation: replay rebuilds the request (O(N) journal).
    """
    return {"response": response, "request": dict(shape)}


def model_response(
    run_id: str, spec: StepSpec, shape: Mapping[str, Any], recorded: Mapping[str, Any]
) -> Any:
    """The response of a journaled model step, after checking it was asked the same way.

    Raises :class:`~stalwart.errors.NonDeterminismError` naming what changed.
    """
    changes = shape_changes(recorded.get("request") or {}, shape)
    if changes:
        raise nondeterminism(run_id, spec, changes)
    return recorded["response"]


async def model_step(
    ctx: RunContext,
    spec: StepSpec,
    shape: Mapping[str, Any],
    body: Callable[[], Awaitable[Any]],
    *,
    call: StepCall | None = None,
) -> Any:
    """Run a model request as the step ``spec``; return its (journaled) response.

    ``body`` calls the model and returns the response as plain data; ``shape`` is what the
    request offered apart from the conversation (see the module docs). ``call`` executes the
    step (default: :func:`~stalwart.kit.call_step` on ``ctx``).
    """

    async def journaled() -> dict[str, Any]:
        return model_record(await body(), shape)

    if call is None:
        recorded = await call_step(ctx, spec, journaled)
    else:
        recorded = await call(spec, journaled)
    return model_response(ctx.run_id, spec, shape, recorded)
