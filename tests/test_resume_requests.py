"""Resume requests on a real JetStream: one message-id scheme, deduplicated per cause and epoch."""

from __future__ import annotations

from stalwart import Client
from stalwart.messages import RunRequest, decode_request
from tests.helpers import rid


async def test_one_resume_per_cause_and_epoch(client: Client) -> None:
    broker, run_id = client.broker, rid()
    # A lost epoch: every supervisor and the draining owner publish it; one request is queued.
    assert await broker.request_resume(run_id, "nobody", 4, "resume") is True
    assert await broker.request_resume(run_id, "nobody", 4, "resume") is False
    # Other causes of the same epoch are not suppressed, nor the same cause of a later epoch.
    for cause in ("timer", "wake", "signal", "cancel"):
        assert await broker.request_resume(run_id, "nobody", 4, cause) is True
    assert await broker.request_resume(run_id, "nobody", 5, "resume") is True
    # The run's own submission is another id again.
    assert await broker.submit(RunRequest(run_id=run_id, agent="nobody")) is True
    assert await broker.submit(RunRequest(run_id=run_id, agent="nobody")) is False

    info = await broker.js.stream_info(broker.names.runs_stream)
    assert info.state.messages == 7
    msg = await broker.js.get_msg(
        broker.names.runs_stream, subject=broker.names.runs_subject("nobody"), seq=1, next=True
    )
    req = decode_request(msg.data)
    assert (req.run_id, req.kind, req.epoch) == (run_id, "resume", 4)
    assert (msg.headers or {}).get("Nats-Msg-Id") == f"{run_id}:resume:4"
