"""A run's timeline, read from its journal: who ran each step, when, how often, at what cost.

Pure functions over journal entries (and the run record), so ``stalwart history`` and any
dashboard render the same thing, and tests need no servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from stalwart import _pricing
from stalwart.checkpoints import (
    Finished,
    Started,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
)
from stalwart.checkpoints._codec import open_text

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stalwart.checkpoints import JournalEntry, RunRecord


class AttemptError(msgspec.Struct, frozen=True):
    """A failed attempt that was retried."""

    attempt: int
    type: str
    message: str
    worker: str
    epoch: int


class StepRow(msgspec.Struct, kw_only=True):
    """One step of the run, as it ended (or as far as it got)."""

    seq: int
    """Journal position of the step's first entry (rows are in this order)."""
    key: str
    kind: str
    name: str
    worker: str
    """The worker that produced the outcome (or the last one that worked on the step)."""
    epoch: int
    at: float
    """When the step's last attempt started (epoch seconds)."""
    attempts: int
    duration: float
    """Seconds the last attempt took (for waits: the whole wait)."""
    outcome: str
    """``completed``, ``failed``, ``retrying`` (attempts failed, no outcome yet), ``unknown``
    (an at-most-once call started and never reported) or ``waiting``."""
    error: str = ""
    errors: list[AttemptError] = []
    """Failed attempts before the last one."""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """A worker took the run (``Started``): the first placement, a resume, or a fork marker."""

    seq: int
    at: float
    worker: str
    epoch: int
    resumed: bool


class History(msgspec.Struct, kw_only=True):
    """A run's timeline (``stalwart history``)."""

    run_id: str
    agent: str
    status: str
    created_at: float
    placements: list[Placement]
    steps: list[StepRow]
    finished_at: float = 0.0
    finished_seq: int = 0
    """Journal position of the ``Finished`` entry (0 while the run goes on)."""
    error_type: str = ""
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    retries: int = 0
    journal_entries: int = 0


def _row(rows: dict[str, StepRow], seq: int, e: Any, kind: str, name: str) -> StepRow:
    r = rows.get(e.key)
    if r is None:
        r = rows[e.key] = StepRow(
            seq=seq,
            key=e.key,
            kind=kind,
            name=name,
            worker=e.worker,
            epoch=e.epoch,
            at=e.at,
            attempts=0,
            duration=0.0,
            outcome="retrying",
        )
    r.worker, r.epoch, r.at = e.worker, e.epoch, e.at
    return r


def _apply(
    rows: dict[str, StepRow],
    seq: int,
    e: StepAttempt | StepIntent | WaitStarted | StepDone | StepError,
    prices: Mapping[str, tuple[float, float]] | None,
) -> None:
    """Fold one step entry into its row."""
    if isinstance(e, WaitStarted):
        _row(
            rows, seq, e, "signal" if e.signal else "sleep", e.signal or "sleep"
        ).outcome = "waiting"
        return
    r = _row(rows, seq, e, e.kind, e.name)
    if isinstance(e, StepAttempt):
        r.errors.append(
            AttemptError(e.attempt, e.error.type, open_text(e.error.message), e.worker, e.epoch)
        )
        r.attempts, r.duration, r.outcome = e.attempt, e.duration, "retrying"
    elif isinstance(e, StepIntent):
        r.attempts, r.outcome = e.attempt, "unknown"
    elif isinstance(e, StepError):
        r.kind, r.name, r.duration = e.kind, e.name, e.duration
        r.attempts = max(e.attempt, r.attempts, 1)
        r.outcome, r.error = "failed", f"{e.error.type}: {open_text(e.error.message)}"
    else:
        r.kind, r.name, r.duration = e.kind, e.name, e.duration
        r.attempts = max(e.attempt, r.attempts, 1)
        r.outcome = "completed"
        if e.kind == "model":
            r.model = e.model or e.name
            r.input_tokens, r.output_tokens = e.input_tokens, e.output_tokens
            r.cost_usd = _pricing.cost(prices, r.model, e.input_tokens, e.output_tokens)


def build_history(
    run_id: str,
    entries: list[JournalEntry],
    record: RunRecord | None = None,
    *,
    prices: Mapping[str, tuple[float, float]] | None = None,
) -> History:
    """The timeline of run ``run_id`` from its journal ``entries`` (and record, if known).

    ``prices`` (USD per million input/output tokens by model) default to
    :data:`stalwart._pricing.DEFAULT_PRICES`.
    """
    placements: list[Placement] = []
    rows: dict[str, StepRow] = {}
    finished: Finished | None = None
    finished_seq = 0
    for je in entries:
        e = je.entry
        if isinstance(e, Started):
            placements.append(
                Placement(seq=je.seq, at=e.at, worker=e.worker, epoch=e.epoch, resumed=e.resumed)
            )
        elif isinstance(e, Finished):
            finished, finished_seq = e, je.seq
        else:
            _apply(rows, je.seq, e, prices)
    steps = sorted(rows.values(), key=lambda r: r.seq)
    created = record.created_at if record is not None else 0.0
    if not created and entries:
        created = entries[0].entry.at
    error = finished.error if finished is not None else None
    return History(
        run_id=run_id,
        agent=record.agent if record is not None else "",
        status=record.status
        if record is not None
        else (finished.status if finished else "running"),
        created_at=created,
        placements=placements,
        steps=steps,
        finished_at=finished.at if finished is not None else 0.0,
        finished_seq=finished_seq,
        error_type=error.type if error else (record.error_type if record else ""),
        error=open_text(error.message if error else (record.error if record else "")),
        input_tokens=sum(s.input_tokens for s in steps),
        output_tokens=sum(s.output_tokens for s in steps),
        cost_usd=sum(s.cost_usd for s in steps),
        retries=sum(len(s.errors) for s in steps),
        journal_entries=len(entries),
    )


def history_json(history: History) -> dict[str, Any]:
    """The timeline as plain JSON-able data (``stalwart history --json``)."""
    out: dict[str, Any] = msgspec.to_builtins(history)
    return out


def _secs(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.1f}ms"
    return f"{value:.2f}s"


_COLUMNS = (
    ("seq", ">"),
    ("at", ">"),
    ("key", "<"),
    ("kind", "<"),
    ("worker", "<"),
    ("epoch", ">"),
    ("att", ">"),
    ("duration", ">"),
    ("outcome", "<"),
    ("tokens in/out", ">"),
    ("cost", ">"),
)


def _table_rows(h: History, t0: float) -> list[list[str]]:
    lines: list[tuple[int, list[str]]] = []
    for p in h.placements:
        # A fork's journal starts with a marker naming its source (see CheckpointStore.fork_run).
        what = "forked" if p.worker.startswith("fork:") else "resumed" if p.resumed else "started"
        cells = [str(p.seq), f"+{p.at - t0:.2f}s", f"run.{what}", "run", p.worker, str(p.epoch)]
        lines.append((p.seq, [*cells, "", "", what, "", ""]))
    for s in h.steps:
        model = s.kind == "model"
        outcome = f"{s.outcome} ({s.error.split(':', 1)[0]})" if s.error else s.outcome
        cells = [str(s.seq), f"+{s.at - t0:.2f}s", s.key, s.kind, s.worker, str(s.epoch)]
        cells += [str(s.attempts), _secs(s.duration), outcome]
        cells += [f"{s.input_tokens}/{s.output_tokens}" if model else ""]
        cells += [f"${s.cost_usd:.6f}" if model else ""]
        lines.append((s.seq, cells))
    if h.finished_at:
        cells = [str(h.finished_seq), f"+{h.finished_at - t0:.2f}s", f"run.{h.status}", "run"]
        lines.append((h.finished_seq, [*cells, "", "", "", "", h.status, "", ""]))
    return [cells for _, cells in sorted(lines, key=lambda x: x[0])]


def format_history(history: History) -> str:
    """The timeline as a table for a terminal (``stalwart history``)."""
    h = history
    t0 = h.created_at or (h.placements[0].at if h.placements else 0.0)
    table = [[name for name, _ in _COLUMNS], *_table_rows(h, t0)]
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]

    def fmt(cells: list[str]) -> str:
        aligned = [
            c.rjust(w) if a == ">" else c.ljust(w)
            for c, w, (_, a) in zip(cells, widths, _COLUMNS, strict=True)
        ]
        return "  ".join(aligned).rstrip()

    summary = (
        f"run {h.run_id}  agent {h.agent or '?'}  {h.status}  "
        f"{len(h.steps)} step(s), {h.retries} retried attempt(s), "
        f"{len(h.placements)} placement(s)"
    )
    if h.input_tokens or h.output_tokens:
        summary += f", tokens {h.input_tokens}/{h.output_tokens}, cost ${h.cost_usd:.6f}"
    body = [summary, *(fmt(r) for r in table)]
    if h.error_type:
        body.append(f"error: {h.error_type}: {h.error}")
    return "\n".join(body)
