"""Patch markers (``ctx.patched``, ``ctx.deprecate_patch``) and build compatibility declarations.

Offline: hand-built journals of ``tests.patch_v1`` / ``patch_v2`` runs replayed against each
version (no servers, no step body runs). The deploys with real workers and the deploy gate are
in ``test_deploys.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from stalwart import ConfigurationError, RunContext
from stalwart.actors import App, fingerprint
from stalwart.actors import _compat as compat
from stalwart.actors._patches import DEPRECATED_SUFFIX, patch_fp
from stalwart.actors._replay import ReplayActor
from stalwart.checkpoints import (
    Finished,
    JournalEntry,
    RunRecord,
    Started,
    StepDone,
    WaitStarted,
    encode_value,
)
from stalwart.errors import NonDeterminismError
from stalwart.observability import replay_run
from tests import patch_v1, patch_v2, patch_v2_bad
from tests.patch_v1 import PROMPT_V1, answer, draft, fetch, hold
from tests.patch_v2 import PROMPT_V2, check

Q = "q"
FACTS = f"facts about {Q}"
TEXT = f"[plain] {FACTS}"


def step(name: str, fn_args: tuple[Any, ...], value: Any) -> StepDone:
    return StepDone(
        key=f"step:{name}",
        kind="step",
        name=name,
        fp=fingerprint(name, fn_args, {}),
        result=encode_value(value),
        epoch=1,
        worker="a",
        at=1.0,
        duration=0.1,
    )


def marker(change_id: str, *, deprecated: bool = False) -> StepDone:
    return StepDone(
        key=f"patch:{change_id}",
        kind="patch",
        name=change_id + (DEPRECATED_SUFFIX if deprecated else ""),
        fp=patch_fp(change_id),
        result=encode_value(True),
        epoch=1,
        worker="a",
        at=1.0,
        duration=0.0,
    )


def journal(*entries: Any, result: Any = None) -> list[JournalEntry]:
    all_entries = [Started(epoch=1, worker="a", at=0.5), *entries]
    if result is not None:
        all_entries.append(
            Finished(status="completed", epoch=1, worker="a", at=2.0, result=encode_value(result))
        )
    return [JournalEntry(seq=i + 1, entry=e) for i, e in enumerate(all_entries)]


def record(status: str = "completed") -> RunRecord:
    return RunRecord(run_id="r1", agent="support", status=status, input=encode_value(Q))  # type: ignore[arg-type]


def v1_steps() -> list[StepDone]:
    return [
        step("fetch", (Q,), FACTS),
        step("draft", (FACTS, "plain"), TEXT),
        step("hold", (), None),
        step("answer", (TEXT, PROMPT_V1), f"{PROMPT_V1} -> {TEXT}"),
    ]


V1_RESULT = {"checked": False, "reply": f"{PROMPT_V1} -> {TEXT}"}


def v2_journal(*, deprecated: bool = False) -> list[JournalEntry]:
    return journal(
        step("fetch", (Q,), FACTS),
        marker("check-facts", deprecated=deprecated),
        step("check", (FACTS,), True),
        step("draft", (FACTS, "plain"), TEXT),
        step("hold", (), None),
        marker("prompt-v2", deprecated=deprecated),
        step("answer", (TEXT, PROMPT_V2), f"{PROMPT_V2} -> {TEXT}"),
        result={"checked": True, "reply": f"{PROMPT_V2} -> {TEXT}"},
    )


def deprecating_app() -> App:
    """``patch_v2`` once no run of version 1 is left: the old paths are gone."""
    app = App("patch-v3")

    @app.agent()
    async def support(ctx: RunContext, question: str) -> dict[str, Any]:
        facts = await ctx.step("fetch", fetch, question)
        await ctx.deprecate_patch("check-facts")
        checked = await ctx.step("check", check, facts)
        text = await ctx.step("draft", draft, facts, "plain")
        await ctx.step("hold", hold)
        await ctx.deprecate_patch("prompt-v2")
        reply = await ctx.step("answer", answer, text, PROMPT_V2)
        return {"checked": checked, "reply": reply}

    return app


def clean_app() -> App:
    """Version 4: no patch call left at all."""
    app = App("patch-v4")

    @app.agent()
    async def support(ctx: RunContext, question: str) -> dict[str, Any]:
        facts = await ctx.step("fetch", fetch, question)
        checked = await ctx.step("check", check, facts)
        text = await ctx.step("draft", draft, facts, "plain")
        await ctx.step("hold", hold)
        reply = await ctx.step("answer", answer, text, PROMPT_V2)
        return {"checked": checked, "reply": reply}

    return app


# --------------------------------------------------------------------------- replay


async def test_a_finished_v1_run_replays_on_patched_code_and_not_on_unpatched() -> None:
    v1 = journal(*v1_steps(), result=V1_RESULT)
    for app in (patch_v1.app, patch_v2.app):
        report = await replay_run(app, record(), v1)
        assert report.matched, report.render()
        assert report.patches == []
    bad = await replay_run(patch_v2_bad.app, record(), v1)
    assert not bad.matched
    assert bad.step == "step:check"
    assert "never executed" in bad.divergence, bad.render()
    # The step sequences side by side, from the first difference.
    assert "journal: step:fetch > step:draft step:hold step:answer" in bad.render()
    assert "code:    step:fetch > step:check" in bad.render()
    assert bad.journal_steps == ["step:fetch", "step:draft", "step:hold", "step:answer"]


async def test_a_run_on_the_new_path_replays_on_patched_code_only() -> None:
    report = await replay_run(patch_v2.app, record(), v2_journal())
    assert report.matched, report.render()
    assert report.patches == ["check-facts", "prompt-v2"]
    assert "patched: check-facts, prompt-v2" in report.render()
    # Rolling back to code without the markers is caught: the journal has steps it lacks.
    back = await replay_run(patch_v1.app, record(), v2_journal())
    assert not back.matched, back.render()
    assert "patch:check-facts" in back.divergence or back.step == "step:answer"


async def test_an_in_flight_v1_run_keeps_the_old_path_up_to_where_it_went() -> None:
    # Went past the first patch point (draft is journaled): old path there, journal ends at
    # hold, before the second patch point.
    flight = journal(step("fetch", (Q,), FACTS), step("draft", (FACTS, "plain"), TEXT))
    report = await replay_run(patch_v2.app, record("running"), flight)
    assert report.matched and report.partial, report.render()
    assert report.replayed == "stopped at step:hold"
    # Journal ends right at the first patch point: a live resume would journal the marker.
    early = await replay_run(patch_v2.app, record("running"), journal(step("fetch", (Q,), FACTS)))
    assert early.matched and early.replayed == "stopped at patch:check-facts", early.render()


async def test_patched_answers_from_evidence_and_keeps_its_answer() -> None:
    flight = journal(step("fetch", (Q,), FACTS), step("draft", (FACTS, "plain"), TEXT))
    actor = ReplayActor(patch_v2.app.get("support"), record("running"), flight)
    ctx = RunContext(actor)
    await ctx.step("fetch", fetch, Q)
    assert await ctx.patched("check-facts") is False  # draft is journaled past this point
    await ctx.step("draft", draft, FACTS, "plain")
    # Nothing is journaled past here any more, yet the same change answers the same.
    assert await ctx.patched("check-facts") is False
    # Live from here: another change journals its marker (a replay stops there); a scoped
    # context's marker has a key of its own.
    with pytest.raises(Exception, match=r"^patch:other$"):
        await ctx.patched("other")
    with pytest.raises(Exception, match=r"^sub/patch:check-facts$"):
        await ctx.scoped("sub").patched("check-facts")


async def test_an_open_wait_is_evidence_of_the_old_path() -> None:
    waiting = journal(
        step("fetch", (Q,), FACTS),
        WaitStarted(key="signal:go", until=0, signal="go", epoch=1, worker="a", at=1.0),
    )
    actor = ReplayActor(patch_v2.app.get("support"), record("waiting"), waiting)
    ctx = RunContext(actor)
    await ctx.step("fetch", fetch, Q)
    assert await ctx.patched("check-facts") is False


async def test_deprecate_patch_refuses_old_path_runs_and_its_marker_may_be_dropped() -> None:
    v1 = journal(*v1_steps(), result=V1_RESULT)
    old = await replay_run(deprecating_app(), record(), v1)
    assert not old.matched
    assert old.step == "patch:check-facts"
    assert "old code path" in old.divergence and "deprecate_patch" in old.divergence
    assert (await replay_run(deprecating_app(), record(), v2_journal())).matched
    # Markers written by deprecate_patch: code without any patch call may leave them unasked,
    # markers written by ctx.patched may not (that code may still have the old path).
    assert (await replay_run(clean_app(), record(), v2_journal(deprecated=True))).matched
    strict = await replay_run(clean_app(), record(), v2_journal())
    assert not strict.matched
    assert "patch:check-facts" in strict.divergence, strict.render()


async def test_deprecate_patch_raises_non_determinism_in_the_agent() -> None:
    actor = ReplayActor(deprecating_app().get("support"), record(), journal(*v1_steps()))
    ctx = RunContext(actor)
    await ctx.step("fetch", fetch, Q)
    with pytest.raises(NonDeterminismError, match="check-facts"):
        await ctx.deprecate_patch("check-facts")


@pytest.mark.parametrize("bad", ["", "a/b", "-x", "x" * 129, "sp ace", 5, None])
async def test_bad_change_ids_are_refused(bad: Any) -> None:
    ctx = RunContext(ReplayActor(patch_v2.app.get("support"), record(), journal()))
    with pytest.raises(ConfigurationError, match="change id"):
        await ctx.patched(bad)
    with pytest.raises(ConfigurationError, match="change id"):
        await ctx.deprecate_patch(bad)


# --------------------------------------------------------------------------- compatibility


def test_compatibility_declarations() -> None:
    compat.reset()
    try:
        assert compat.compatible("v1", "v1")
        assert compat.compatible("", "v2")  # a run older than builds
        assert not compat.compatible("v1", "v2")
        compat.declare_app(patch_v2.app, "v2")  # compatible_with=["patch-v1"]
        compat.declare_compatible("v1", "v2")
        assert compat.compatible("v1", "v2") and compat.compatible("patch-v1", "v2")
        assert not compat.compatible("v2", "v1")  # not symmetric
        compat.declare_compatible("v2", "v3")
        assert not compat.compatible("v1", "v3")  # not transitive
        assert compat.compatible_builds("v2") == {"v1", "patch-v1"}
        assert compat.compatible_builds("v9") == set()
    finally:
        compat.reset()


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "x" * 65, ".x", "v1.2", "a*", 3])
def test_bad_build_ids_are_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="build id"):
        compat.declare_compatible(bad, "v2")
    with pytest.raises(ConfigurationError, match="build id"):
        App("x", compatible_with=[bad])


def test_compatible_with_takes_a_list() -> None:
    with pytest.raises(ConfigurationError, match="list of build ids"):
        App("x", compatible_with="v1")
    assert App("x", compatible_with=["v1", "v1", "v0"]).compatible_with == ("v1", "v0")


# --------------------------------------------------------------------------- kit.Patched


class _Owner:
    def __init__(self, source: Any) -> None:
        self.agent = source


async def test_patched_factories_are_decided_per_run() -> None:
    from stalwart.kit import Patched
    from stalwart.kit._versions import decide_patched, reset_patched

    factory: Patched[str] = Patched("prompt-v2", new=lambda: "v2", old=lambda: "v1")
    assert factory() == "v2"  # outside a run: the new version
    # A run that journaled steps without the marker keeps the old version...
    actor = ReplayActor(patch_v2.app.get("support"), record("running"), journal(*v1_steps()[:2]))
    token = await decide_patched(RunContext(actor), _Owner(factory))
    try:
        assert factory() == "v1"
    finally:
        reset_patched(token)
    assert factory() == "v2"
    # ...a run with the marker the new one, and a deprecated patch refuses the old path.
    marked = journal(marker("prompt-v2"), step("fetch", (Q,), FACTS))
    actor = ReplayActor(patch_v2.app.get("support"), record("running"), marked)
    token = await decide_patched(RunContext(actor), _Owner(factory))
    assert factory() == "v2"
    reset_patched(token)
    deprecated: Patched[str] = Patched("prompt-v2", new=lambda: "v2", old=None)
    actor = ReplayActor(patch_v2.app.get("support"), record("running"), journal(*v1_steps()[:2]))
    with pytest.raises(NonDeterminismError, match="prompt-v2"):
        await decide_patched(RunContext(actor), _Owner(deprecated))


def test_patched_refuses_what_it_cannot_call() -> None:
    from stalwart.kit import Patched

    with pytest.raises(ConfigurationError, match="zero-argument functions"):
        Patched("x", new="agent", old=lambda: "a")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="change id"):
        Patched("a b", new=lambda: 1, old=lambda: 0)
