"""cancel_and_wait: stopping background tasks hands the stopper's own cancellation on."""

from __future__ import annotations

import asyncio

from stalwart._tasks import cancel_and_wait


async def _slow_to_stop(stopping: asyncio.Event, release: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        stopping.set()
        await release.wait()  # cleanup that takes a while once cancelled


async def test_a_stopper_cancelled_while_it_waits_is_cancelled() -> None:
    stopping, release = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_slow_to_stop(stopping, release))
    await asyncio.sleep(0)  # let it start
    stopper = asyncio.create_task(cancel_and_wait([task]))
    await stopping.wait()
    stopper.cancel()
    # With "cancel; suppress(CancelledError); await task" the stopper's cancellation went
    # on to the task, which raised it, and the suppress ate it: the stopper returned None.
    done, _ = await asyncio.wait({stopper}, timeout=5)
    assert done and stopper.cancelled()
    assert not task.done()  # the task was not cancelled a second time
    release.set()
    await asyncio.wait({task})
    assert task.cancelled()


async def test_errors_of_stopped_tasks_are_retrieved_and_a_timeout_is_reported() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.wait({failed})
    stopping, release = asyncio.Event(), asyncio.Event()
    slow = asyncio.create_task(_slow_to_stop(stopping, release))
    await asyncio.sleep(0)
    assert await cancel_and_wait([failed, slow], timeout=0.05) is False
    assert stopping.is_set() and not slow.done()
    release.set()
    assert await cancel_and_wait([failed, slow]) is True
    assert slow.cancelled()
    # Retrieved: the loop's handler would otherwise log "exception was never retrieved".
    assert failed._log_traceback is False  # type: ignore[attr-defined]


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    # What asyncio.wait_for does on Python 3.11 when a cancellation arrives as the awaited
    # result lands (nats-py's requests use it): the task goes on to its next await.
    swallowed = asyncio.Event()

    async def swallows_once() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(swallows_once())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout=5) is True
    assert swallowed.is_set() and task.cancelled()


async def test_a_task_stopping_its_own_tasks_is_not_interrupted_by_a_second_cancel() -> None:
    # The supervisor stops _supervise, which stops its leader tasks, one of which (Liveness)
    # stops its own. Cancelling the middle task again would cut its cleanup short and leave
    # a child that swallowed its first cancel running.
    swallowed = asyncio.Event()

    async def child() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.Event().wait()

    kid = asyncio.create_task(child())

    async def parent() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await cancel_and_wait([kid])

    mid = asyncio.create_task(parent())
    await asyncio.sleep(0)
    assert await cancel_and_wait([mid], timeout=5) is True
    assert swallowed.is_set() and kid.cancelled() and mid.cancelled()
