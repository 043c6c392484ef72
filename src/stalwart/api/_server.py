"""Serve the control API on ``<ns>.api.*``: submit, cancel, signal, approve, status, result.

Every worker and supervisor serves it in one queue group, so a request is answered by one
of them and the API is up while any of them is. Each operation is the Python client's own
code (:class:`~stalwart.client.Client`, :class:`~stalwart.client.RunHandle`) run on the
serving process's connections: there is one implementation of what a submit, a cancel or
a signal means, whoever asks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from typing import TYPE_CHECKING, Any, Final

import msgspec
import redis.exceptions

from stalwart._tasks import cancel_and_wait
from stalwart._text import SEALED_TEXT_PREFIX, clip, safe_text
from stalwart._wire import (
    CONTENT_TYPE,
    JSON,
    WireFormatError,
    decode,
    encode,
    encode_plain,
    encoding_of,
)
from stalwart.api._messages import (
    ERROR_HEADER,
    OPERATIONS,
    ApiError,
    ApproveRequest,
    CancelReply,
    CancelRequest,
    ErrorCode,
    ResultReply,
    ResultRequest,
    SignalReply,
    SignalRequest,
    StatusReply,
    StatusRequest,
    SubmitReply,
    SubmitRequest,
    page_bounds,
    reply_allowed,
)
from stalwart.checkpoints._codec import (
    describe_sealed,
    is_sealed,
    sealed_marker,
)
from stalwart.checkpoints._envelope import envelope_key_id
from stalwart.client import Client
from stalwart.errors import (
    ApprovalRefusedError,
    InvalidRequestError,
    PayloadTooLargeError,
    QueueFullError,
    RunNotFoundError,
    ServerUnavailableError,
    SignalRefusedError,
    UnknownAgentError,
)
from stalwart.messages import ErrorData

if TYPE_CHECKING:
    import structlog
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from stalwart._services import ServiceDeps
    from stalwart.checkpoints import RunRecord

QUEUE_GROUP: Final = "stalwart-api"
"""The queue group every serving process joins: each request reaches one of them."""

MAX_IN_FLIGHT: Final = 64
"""Requests one process handles at once; beyond that it answers ``busy`` at once."""

OPERATION_TIMEOUT: Final = 10.0
"""Seconds an operation may take (on top of a result's ``wait``) before it is answered
``unavailable``: the store retries through a Redis outage for longer than a caller waits."""

STOP_GRACE: Final = 1.0
"""Seconds a stopping server lets requests in flight finish before answering them
``unavailable``."""

_PAGE_OVERHEAD = 2048
"""Bytes of a result page's message kept for everything but the data (fields, headers)."""


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _code(exc: BaseException) -> ErrorCode:
    """The error code of an exception the client code raised."""
    if isinstance(exc, _Refused):
        return exc.code
    if isinstance(exc, WireFormatError | msgspec.ValidationError):
        return "malformed"
    if isinstance(exc, RunNotFoundError):
        return "unknown_run"
    if isinstance(exc, UnknownAgentError):
        return "unknown_agent"
    if isinstance(exc, PayloadTooLargeError):
        return "too_large"
    if isinstance(exc, SignalRefusedError) and "over signal_max_bytes" in str(exc):
        return "too_large"
    if isinstance(exc, QueueFullError | SignalRefusedError | ApprovalRefusedError):
        return "refused"
    if isinstance(exc, InvalidRequestError):
        return "invalid"
    if isinstance(exc, ServerUnavailableError | redis.exceptions.ConnectionError | OSError):
        return "unavailable"
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
        return "unavailable"
    return "internal"


def _shown_text(text: str) -> str:
    """A stored text as a reader without the key sees it: the API never decrypts."""
    if not text.startswith(SEALED_TEXT_PREFIX):
        return text
    try:
        blob = base64.b64decode(text[len(SEALED_TEXT_PREFIX) :], validate=True)
        return sealed_marker(envelope_key_id(blob))
    except (binascii.Error, ValueError):
        return sealed_marker("")


class ApiServer:
    """Answers ``<ns>.api.*`` requests on behalf of ``client`` (a worker's or supervisor's
    connections wrapped in a :class:`~stalwart.client.Client`)."""

    def __init__(
        self,
        client: Client,
        log: structlog.typing.FilteringBoundLogger,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        timeout: float = OPERATION_TIMEOUT,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._log = log
        self._max = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Join the queue group on every operation's subject."""
        names = self._client.broker.names
        self._sub = await self._client.broker.nc.subscribe(
            names.api_wildcard, queue=QUEUE_GROUP, cb=self._on_request
        )
        # Once started, the server knows the subscription: a request sent now is answered.
        await self._client.broker.nc.flush()

    async def stop(self) -> None:
        """Leave the queue group, give requests in flight :data:`STOP_GRACE` seconds to be
        answered, then answer the rest (a ``result`` waiting for its run) ``unavailable``:
        a draining worker must not spend its drain budget on them, and the requester asks
        again and reaches another server."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_GRACE)
        await cancel_and_wait(set(self._tasks), STOP_GRACE)

    async def _on_request(self, msg: Msg) -> None:
        # The subscription's callbacks run one at a time: each request gets its own task,
        # so a `result` that waits for a run does not hold up the others.
        if not msg.reply:
            return  # nobody to answer: a publish, not a request
        if not reply_allowed(msg.reply, self._client.broker.names.inbox_prefix):
            self._log.warning("api.reply_refused", subject=msg.subject, reply=clip(msg.reply, 200))
            return
        if len(self._tasks) >= self._max:
            try:
                encoding = encoding_of(msg.headers)
            except WireFormatError:
                encoding = JSON
            busy = (
                f"this server is answering its maximum of {self._max} requests at once; ask again"
            )
            await self._respond_error(msg, encoding, "busy", busy)
            return
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        operation = msg.subject.rsplit(".", 1)[-1]
        encoding = JSON
        try:
            encoding = encoding_of(msg.headers)
            shape = OPERATIONS.get(operation)
            if shape is None:
                known = ", ".join(OPERATIONS)
                raise _Refused(
                    "unknown_operation", f"no API operation {operation!r} (one of {known})"
                )
            body = decode(
                msg.data,
                shape,
                encoding,
                what=f"{operation} request",
                max_nesting=self._client.settings.max_nesting,
            )
            wait = body.wait if isinstance(body, ResultRequest) else 0.0
            try:
                async with asyncio.timeout(self._timeout + wait):
                    reply = await self._dispatch(body, encoding, msg)
            except TimeoutError:
                # Submit, cancel and signal are safe to repeat: a submit with the same
                # run_id starts nothing new, a stored signal or cancel is never lost.
                raise _Refused(
                    "unavailable",
                    f"no answer from Redis or NATS within {self._timeout:g} s; the {operation} "
                    "may or may not have happened: ask again (a submit with the same run_id "
                    "starts nothing new)",
                ) from None
        except asyncio.CancelledError:
            if self._sub is None:  # stopping: say so rather than leave the requester waiting
                await self._respond_error(
                    msg, encoding, "unavailable", "the server is stopping: ask again"
                )
            raise
        except Exception as exc:
            code = _code(exc)
            if code == "internal":
                self._log.exception("api.failed", operation=operation)
            await self._respond_error(msg, encoding, code, clip(safe_text(exc), 2000))
            return
        await self._respond(msg, encode(reply, encoding), {CONTENT_TYPE: encoding})

    async def _respond_error(self, msg: Msg, encoding: str, code: ErrorCode, message: str) -> None:
        body = encode(ApiError(code=code, message=message), encoding)
        await self._respond(msg, body, {CONTENT_TYPE: encoding, ERROR_HEADER: code})

    async def _respond(self, msg: Msg, body: bytes, headers: dict[str, str]) -> None:
        # A reply larger than max_payload would be refused by the client library: only a
        # result page could be, and its size is bounded by max_payload above.
        try:
            await self._client.broker.nc.publish(msg.reply, body, headers=headers)
        except Exception as exc:  # the requester times out; say why here at least
            self._log.warning("api.reply_failed", subject=msg.subject, error=safe_text(exc))

    async def _dispatch(self, body: Any, encoding: str, msg: Msg) -> msgspec.Struct:
        client = self._client
        if isinstance(body, SubmitRequest):
            handle = await client.submit(
                body.agent,
                body.input,
                run_id=body.run_id,
                require_registered=body.require_registered,
                lane=body.lane,
            )
            return SubmitReply(run_id=handle.run_id, agent=body.agent, lane=body.lane)
        if isinstance(body, CancelRequest):
            outcome = await client.handle(body.run_id).cancel(body.reason)
            if outcome == "missing":
                raise RunNotFoundError(body.run_id)
            return CancelReply(run_id=body.run_id, outcome=outcome)
        if isinstance(body, SignalRequest):
            handle = client.handle(body.run_id)
            signalled = await handle.signal(body.name, body.payload)
            return SignalReply(
                run_id=body.run_id, outcome="woke" if signalled == "woke" else "stored"
            )
        if isinstance(body, ApproveRequest):
            handle = client.handle(body.run_id)
            answer = handle.approve if body.approved else handle.reject
            signalled = await answer(
                body.call_id, tool=body.tool, args_hash=body.args_hash, message=body.message
            )
            return SignalReply(
                run_id=body.run_id, outcome="woke" if signalled == "woke" else "stored"
            )
        if isinstance(body, StatusRequest):
            return _status(await client.handle(body.run_id).status())
        assert isinstance(body, ResultRequest)
        return await self._result(body, encoding, msg)

    async def _result(self, body: ResultRequest, encoding: str, msg: Msg) -> ResultReply:
        handle = self._client.handle(body.run_id)
        record = await handle.status()
        if not record.terminal and body.wait > 0:
            with contextlib.suppress(TimeoutError):
                record = await handle.wait(body.wait)
        if not record.terminal:
            raise _Refused(
                "not_finished",
                f"run {body.run_id!r} is {record.status}: ask again when it has ended (follow "
                "its events, or pass wait)",
            )
        if record.status != "completed":
            error = ErrorData(type=record.error_type, message=_shown_text(record.error))
            return ResultReply(run_id=body.run_id, status=record.status, error=error)
        if record.result is not None and is_sealed(record.result):
            # Encrypted: the API never decrypts (anyone allowed to ask would read it in
            # clear); read it with a client that holds the key.
            error = ErrorData(type="PayloadEncrypted", message=describe_sealed(record.result))
            return ResultReply(run_id=body.run_id, status=record.status, error=error)
        data = encode_plain(record.decode_result(), encoding)
        room = self._client.broker.nc.max_payload - _PAGE_OVERHEAD - len(msg.reply)
        if encoding == JSON:
            room = room * 3 // 4  # base64
        if body.max_bytes:
            room = min(room, body.max_bytes)
        try:
            start, end = page_bounds(len(data), body.offset, room)
        except ValueError as exc:
            raise _Refused("invalid", f"run {body.run_id!r}: {exc}") from None
        return ResultReply(
            run_id=body.run_id,
            status=record.status,
            size=len(data),
            offset=start,
            data=data[start:end],
        )


def _status(record: RunRecord) -> StatusReply:
    return StatusReply(
        run_id=record.run_id,
        agent=record.agent,
        status=record.status,
        epoch=record.epoch,
        worker=record.worker,
        lane=record.lane,
        created_at=record.created_at,
        updated_at=record.updated_at,
        error_type=record.error_type,
        error=_shown_text(record.error),
        waiting_for=record.waiting_for,
        wake_at=record.wake_at,
        deadline=record.deadline,
        terminal=record.terminal,
        conversation=record.conversation,
        wait_signal=record.wait_signal,
        wait_deadline=record.wait_deadline,
    )


async def serve_api(
    deps: ServiceDeps, *, timeout: float = OPERATION_TIMEOUT, max_in_flight: int = MAX_IN_FLIGHT
) -> ApiServer:
    """Start answering the control API on a worker's or supervisor's connections (a
    service factory: ``Worker(app, settings, services=[serve_api])``)."""
    client = Client(deps.broker, deps.store, deps.settings)
    log = deps.log.bind(component="api")
    server = ApiServer(client, log, timeout=timeout, max_in_flight=max_in_flight)
    await server.start()
    return server
