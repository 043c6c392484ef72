"""The deploy gate: replay the recent runs of an agent against new code, offline.

``stalwart replay --recent N --agent A APP`` (and :func:`replay_recent`) finds the last ``N``
completed runs of agent ``A`` (with ``include_running``, its runs in flight too) through the
operations read model and replays each journal with :meth:`~stalwart.client.RunHandle.replay`:
no step body, model or tool is called, nothing is written. Run it in CI before a deploy: a
divergence means the new code would fail those runs if they were resumed on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from stalwart.actors._replay import ReplayReport  # noqa: TC001 (msgspec reads field types at runtime)
from stalwart.errors import InvalidRequestError, RunNotFoundError
from stalwart.operations._runs import RunQuery, list_runs

if TYPE_CHECKING:
    from stalwart.actors import App
    from stalwart.client import Client

MAX_RECENT = 1000
"""Most runs one gate replays."""
_IN_FLIGHT = ["running", "waiting"]
_SCAN_PAGES = 50
"""Pages of the run index one gate reads at most (each bounded by ``max_scan``)."""


class GateReport(msgspec.Struct, kw_only=True):
    """The outcome of :func:`replay_recent`: one :class:`ReplayReport` per run checked."""

    agent: str
    passed: bool
    """No run diverged (also true when there was no run to check: see ``checked``)."""
    checked: int
    diverged: int
    reports: list[ReplayReport]
    skipped: list[str] = msgspec.field(default_factory=list)
    """Runs listed but gone before their journal could be read (retention)."""

    @property
    def first_divergence(self) -> ReplayReport | None:
        """The report of the newest run that diverged."""
        return next((r for r in self.reports if not r.matched), None)

    def render(self) -> str:
        """A human-readable verdict: counts, then the first divergence in full."""
        head = (
            f"deploy gate, agent {self.agent}: {self.checked} run(s) replayed, "
            f"{self.checked - self.diverged} match, {self.diverged} diverged"
        )
        if self.checked == 0:
            return f"{head} (no run to check: nothing proves the code compatible)"
        first = self.first_divergence
        if first is None:
            return f"{head}: PASS"
        others = [r.run_id for r in self.reports if not r.matched and r is not first]
        lines = [f"{head}: FAIL", first.render()]
        if others:
            lines.append(f"  also diverged: {', '.join(others[:20])}")
        return "\n".join(lines)


async def replay_recent(
    client: Client,
    app: App,
    agent: str,
    *,
    recent: int = 20,
    include_running: bool = False,
    timeout: float = 60.0,
) -> GateReport:
    """Replay the journals of ``agent``'s last ``recent`` completed runs against ``app``.

    With ``include_running``, its runs in flight (``running``, ``waiting``) count too: each
    is checked as far as its journal goes. ``timeout`` bounds each replay. Raises
    :class:`~stalwart.errors.UnknownAgentError` when ``app`` has no agent ``agent`` and
    :class:`~stalwart.errors.InvalidRequestError` for a bad ``recent``.
    """
    if isinstance(recent, bool) or not isinstance(recent, int) or not 1 <= recent <= MAX_RECENT:
        raise InvalidRequestError(f"recent must be a whole number 1-{MAX_RECENT}, got {recent!r}")
    app.get(agent)  # a typo in the agent's name is an error, not an empty pass
    statuses = ["completed", *(_IN_FLIGHT if include_running else [])]
    run_ids: list[str] = []
    cursor: str | None = None
    for _ in range(_SCAN_PAGES):
        query = RunQuery(status=statuses, agent=agent, limit=recent - len(run_ids), cursor=cursor)
        page = await list_runs(client, query)
        run_ids.extend(r.run_id for r in page.runs)
        cursor = page.next_cursor
        if len(run_ids) >= recent or cursor is None:
            break
    reports: list[ReplayReport] = []
    skipped: list[str] = []
    for run_id in run_ids:
        handle = client.handle(run_id)
        try:
            reports.append(await handle.replay(app, timeout=timeout))
        except RunNotFoundError:
            skipped.append(run_id)
    diverged = sum(1 for r in reports if not r.matched)
    return GateReport(
        agent=agent,
        passed=diverged == 0,
        checked=len(reports),
        diverged=diverged,
        reports=reports,
        skipped=skipped,
    )
