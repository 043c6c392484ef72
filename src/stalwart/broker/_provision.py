"""``stalwart provision``: create or update a namespace's streams, buckets and consumers.

The admin's job, so that workers, supervisors and clients can run without any right to
create, update or delete them (docs/security.md#least-privilege-roles). Idempotent: a second
run changes nothing and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.js.errors import BadRequestError, NotFoundError

from stalwart._ids import check_agent_name
from stalwart.broker._setup import (
    consumer_config,
    kv_configs,
    lookup_stream,
    placement,
    replication_changes,
    stream_configs,
    wait_ready,
)
from stalwart.builds._ids import routing_lane

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nats.js import JetStreamContext
    from nats.js.api import StreamConfig

    from stalwart.broker._names import Names
    from stalwart.config import Settings

_UPDATABLE = (
    "subjects",
    "max_age",
    "max_msgs",
    "max_bytes",
    "max_msg_size",
    "discard",
    "duplicate_window",
    "allow_direct",
    "num_replicas",
)
"""Stream fields provisioning brings to the settings' values (JetStream can change them).

``num_replicas`` both ways: the admin's settings are the wanted redundancy (a worker only
ever scales up). A placement is brought to the settings' only when they name one."""
_FIXED = ("retention", "storage")
"""Fields JetStream cannot change on an existing stream: reported, never touched."""


def _same(have: object, want: object) -> bool:
    if isinstance(have, float | int) and isinstance(want, float | int):
        # Durations travel as nanoseconds and come back as floats.
        return abs(float(have) - float(want)) < 1e-6
    if isinstance(have, list) and isinstance(want, list):
        return sorted(have) == sorted(want)
    return have == want or (have is None and want is False)


def _show(value: object) -> str:
    return str(getattr(value, "value", value))


async def _stream(
    js: JetStreamContext, names: Names, wanted: StreamConfig, settings: Settings
) -> list[str]:
    assert wanted.name is not None
    current = await lookup_stream(js, wanted.name, names)
    if current is None:
        await js.add_stream(wanted)
        return [f"stream {wanted.name}: created"]
    lines = []
    for field in _FIXED:
        have, want = getattr(current, field), getattr(wanted, field)
        if have != want:
            lines.append(
                f"stream {wanted.name}: {field} is {_show(have)}, wanted {_show(want)}: "
                "JetStream cannot change it in place (left as it is)"
            )
    changes = {
        f: getattr(wanted, f)
        for f in _UPDATABLE
        if getattr(wanted, f) is not None and not _same(getattr(current, f), getattr(wanted, f))
    }
    if wanted.placement is not None and "placement" in replication_changes(current, settings):
        changes["placement"] = wanted.placement
    if not changes:
        return [*lines, f"stream {wanted.name}: unchanged"]
    await js.update_stream(current.evolve(**changes))
    said = ", ".join(f"{f} {_show(getattr(current, f))} -> {_show(v)}" for f, v in changes.items())
    return [*lines, f"stream {wanted.name}: updated ({said})"]


async def _consumer(
    js: JetStreamContext, names: Names, settings: Settings, agent: str, lane: str = ""
) -> list[str]:
    wanted = consumer_config(names, settings, agent, lane)
    durable = names.consumer(agent, lane)
    try:
        current = (await js.consumer_info(names.runs_stream, durable)).config
    except NotFoundError:
        await js.add_consumer(names.runs_stream, wanted)
        return [f"consumer {names.runs_stream}/{durable}: created"]
    changes = {
        f: getattr(wanted, f)
        for f in ("ack_wait", "max_deliver", "filter_subject")
        if not _same(getattr(current, f), getattr(wanted, f))
    }
    if not changes:
        return [f"consumer {names.runs_stream}/{durable}: unchanged"]
    try:
        await js.add_consumer(names.runs_stream, current.evolve(**changes))
    except BadRequestError as exc:
        return [f"consumer {names.runs_stream}/{durable}: not updated ({exc.description})"]
    said = ", ".join(f"{f} {_show(getattr(current, f))} -> {_show(v)}" for f, v in changes.items())
    return [f"consumer {names.runs_stream}/{durable}: updated ({said})"]


async def provision(
    js: JetStreamContext,
    names: Names,
    settings: Settings,
    agents: list[str],
    builds: Sequence[str] = (),
) -> list[str]:
    """Create or update every stream, KV bucket and (for ``agents``, in each of
    ``settings.lanes``, and in each lane's build lane of ``builds``) consumer of the
    namespace with ``settings``' limits; one line per object saying what was done."""
    for agent in agents:
        check_agent_name(agent)
    lines: list[str] = []
    for stream in stream_configs(names, settings):
        lines += await _stream(js, names, stream, settings)
    for kv in kv_configs(names, settings):
        current = await lookup_stream(js, names.kv_stream(kv.bucket), names)
        if current is None:
            await js.create_key_value(kv)
            lines.append(f"KV bucket {kv.bucket}: created")
            continue
        # A bucket is a stream: its replicas and placement change like a stream's.
        changes: dict[str, object] = {}
        if (current.num_replicas or 1) != settings.nats_replicas:
            changes["num_replicas"] = settings.nats_replicas
        if "placement" in replication_changes(current, settings):
            changes["placement"] = placement(settings)
        if not changes:
            lines.append(f"KV bucket {kv.bucket}: unchanged")
            continue
        await js.update_stream(current.evolve(**changes))
        said = ", ".join(
            f"{f} {_show(getattr(current, f))} -> {_show(v)}" for f, v in changes.items()
        )
        lines.append(f"KV bucket {kv.bucket}: updated ({said})")
    # A stream just created or scaled up has no leader (or too few current replicas) for a
    # moment, and a consumer created on it then is refused ("insufficient resources").
    await wait_ready(
        js,
        names,
        settings,
        [s.name for s in stream_configs(names, settings)]
        + [names.kv_stream(kv.bucket) for kv in kv_configs(names, settings)],
    )
    for agent in agents:
        for lane in settings.lane_list:
            lines += await _consumer(js, names, settings, agent, lane)
            for build in builds:  # the resumes of the build's runs (docs/deploys.md)
                lines += await _consumer(js, names, settings, agent, routing_lane(lane, build))
    return lines
