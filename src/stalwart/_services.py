"""Services a worker or supervisor process runs on its connections, given from outside.

The control API (``stalwart.api``) is built on the client, and the client depends on the
actors (replay, history): the worker cannot import it without a cycle. So the process's
composition root (the ``stalwart worker`` / ``supervisor`` commands, ``stalwart dev``)
passes service factories in, and the worker and supervisor start and stop whatever they
were given, knowing nothing of what it is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import structlog

    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore
    from stalwart.config import Settings


@dataclass(frozen=True, slots=True)
class ServiceDeps:
    """What a service may use: the process's two connections, its settings and its log."""

    broker: Broker
    store: CheckpointStore
    settings: Settings
    log: structlog.typing.FilteringBoundLogger


class Service(Protocol):
    """A started service: stopped before the process closes its connections."""

    async def stop(self) -> None:
        """Stop serving (bounded: a stopping process must not hang on it)."""


async def start_services(
    factories: Sequence[Callable[[ServiceDeps], Awaitable[Service]]], deps: ServiceDeps
) -> list[Service]:
    """Start each service in order; one that fails to start fails the process's start."""
    started: list[Service] = []
    try:
        for factory in factories:
            started.append(await factory(deps))
    except BaseException:
        await stop_services(started)
        raise
    return started


async def stop_services(services: Sequence[Service]) -> None:
    """Stop every service; one that fails to stop does not keep the others running."""
    for service in reversed(services):
        with contextlib.suppress(Exception):
            await service.stop()
