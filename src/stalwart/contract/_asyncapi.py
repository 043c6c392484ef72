"""Build the AsyncAPI 3.0 document of Stalwart's wire contract from the code itself.

Subjects come from :class:`~stalwart.broker.Names` (called with placeholder tokens that are
then written as ``{namespace}``, ``{agent}``...), schemas from the msgspec structs
(``msgspec.json.schema_components``), headers and error codes from the constants the
servers use. Nothing here is written by hand that the code also knows, so the committed
document (docs/contract/asyncapi.json) cannot drift: a test compares it with this.
"""

from __future__ import annotations

import json
from typing import Any, get_args

import msgspec

from stalwart._wire import CONTENT_TYPE, ENCODINGS, JSON, MSGPACK
from stalwart.api._messages import (
    DEFAULT_INBOX,
    ERROR_HEADER,
    OPERATIONS,
    REPLIES,
    ApiError,
    ErrorCode,
)
from stalwart.api._server import OPERATION_TIMEOUT, QUEUE_GROUP
from stalwart.broker._names import Names, submit_msg_id
from stalwart.messages import EVENT_DATA, NO_AGENT_TOKEN, RunEvent, RunRequest

TITLE = "Stalwart wire contract"
CONTRACT_VERSION = "1.0.0"
"""The contract's own version: raised when a subject, header or shape changes."""

# Placeholders Names accepts as plain tokens (a brace would be refused or hashed by the
# token rules); written as AsyncAPI parameters.
_NS, _AGENT, _RUN, _LANE, _SOURCE = (
    "NSxPLACEHOLDER",
    "AGENTxPLACEHOLDER",
    "RUNxPLACEHOLDER",
    "LANExPLACEHOLDER",
    "SOURCExPLACEHOLDER",
)
_PLACEHOLDERS = {
    _NS: "{namespace}",
    _AGENT: "{agent}",
    _RUN: "{run_id}",
    _LANE: "{lane}",
    _SOURCE: "{source}",
}

_REF = "#/components/schemas/{name}"


def _address(subject: str) -> str:
    for token, param in _PLACEHOLDERS.items():
        subject = subject.replace(token, param)
    return subject


def _params(address: str) -> dict[str, Any]:
    described = {
        "namespace": {
            "description": "The deployment's namespace (setting `namespace`).",
            "default": "stalwart",
        },
        "agent": {
            "description": "An agent name (a-z A-Z 0-9 _ -). In event subjects, an agent that "
            f"is not a usable token is written {NO_AGENT_TOKEN!r}."
        },
        "run_id": {"description": "A run id (a-z A-Z 0-9 _ -, up to 128 characters)."},
        "lane": {"description": "A lane (a-z 0-9 _ -, up to 32 characters)."},
        "source": {
            "description": "`sys` (workers, supervisors) or `client` (what clients announce).",
            "enum": ["sys", "client"],
        },
    }
    return {name: described[name] for name in described if "{" + name + "}" in address}


def _schemas() -> dict[str, Any]:
    structs: list[Any] = [RunRequest, RunEvent, ApiError]
    structs += [t for t in EVENT_DATA.values() if t is not None]
    structs += list(OPERATIONS.values()) + list(REPLIES.values())
    unique = list(dict.fromkeys(structs))
    _, components = msgspec.json.schema_components(unique, ref_template=_REF)
    return dict(sorted(components.items()))


def _headers(*extra: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    props: dict[str, Any] = {
        CONTENT_TYPE: {
            "type": "string",
            "enum": list(ENCODINGS),
            "description": f"The body's encoding; absent means {MSGPACK}.",
        }
    }
    props.update(dict(extra))
    return {"type": "object", "properties": props}


def _message(
    name: str, schema: str, summary: str, headers: dict[str, Any] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "summary": summary,
        "payload": {"$ref": _REF.format(name=schema)},
    }
    if headers is not None:
        out["headers"] = headers
    return out


def _core_messages() -> dict[str, Any]:
    """The messages that are not the API's: run requests, events, pokes, the error reply."""
    return {
        "RunRequest": _message(
            "RunRequest",
            "RunRequest",
            "Start a run (publish to the runs stream; kind `start`).",
            _headers(
                (
                    "Nats-Msg-Id",
                    {
                        "type": "string",
                        "description": "The run id (`"
                        + submit_msg_id("<run_id>")
                        + "`): JetStream drops a resent copy, and a worker ends the run "
                        "rejected only when its own request is refused.",
                    },
                )
            ),
        ),
        "RunEvent": _message(
            "RunEvent",
            "RunEvent",
            "One event of a run's life (always JSON, no header). `data` has the shape "
            "named for its `type` in x-stalwart-event-data.",
            None,
        ),
        "Poke": {
            "name": "Poke",
            "summary": "Empty: a signal or cancel was stored for the run (core NATS).",
            "payload": {"type": "string", "maxLength": 0},
        },
        "ApiError": _message(
            "ApiError",
            "ApiError",
            f"An error reply: header {ERROR_HEADER} holds its code.",
            _headers((ERROR_HEADER, {"type": "string", "enum": list(get_args(ErrorCode))})),
        ),
    }


def _core_channels(n: Names) -> dict[str, Any]:
    """The subjects of the runs and events streams, pokes, and the requester's inbox."""
    agent, run, lane, source = _AGENT, _RUN, _LANE, _SOURCE
    return {
        "runs": {
            "address": n.runs_subject(agent),
            "messages": {"RunRequest": {"$ref": "#/components/messages/RunRequest"}},
            "description": "Run requests of one agent's default lane (JetStream stream "
            f"{_address(n.runs_stream)}).",
        },
        "runsLane": {
            "address": n.runs_subject(agent, lane),
            "messages": {"RunRequest": {"$ref": "#/components/messages/RunRequest"}},
            "description": "Run requests of one agent's lane.",
        },
        "events": {
            "address": n.events_subject(run, "sys", agent=agent).removesuffix(".sys")
            + f".{source}",
            "messages": {"RunEvent": {"$ref": "#/components/messages/RunEvent"}},
            "description": "A run's events (JetStream stream "
            f"{_address(n.events_stream)}; follow one run with "
            f"`{_address(n.run_events(run))}`, one agent with "
            f"`{_address(n.agent_events(agent))}`).",
        },
        "rejected": {
            "address": n.rejected_subject(agent),
            "messages": {"RunEvent": {"$ref": "#/components/messages/RunEvent"}},
            "description": "Rejections of requests that carry no usable run id.",
        },
        "signals": {
            "address": n.signals_subject(run),
            "messages": {"Poke": {"$ref": "#/components/messages/Poke"}},
            "description": "Pokes a live run after a signal or cancel was stored: use "
            "the API's signal and cancel, which store first.",
        },
        "reply": {
            "address": None,
            "messages": {},
            "description": "The requester's inbox (NATS request/reply). Replies go only to "
            f"`{DEFAULT_INBOX}.>` or `{_address(n.inbox_prefix)}.>` (the latter under role "
            "permissions); a request with any other reply subject is dropped.",
        },
    }


def _core_operations() -> dict[str, Any]:
    """Publishing run requests, receiving events and rejections."""
    return {
        "publishRunRequest": {
            "action": "send",
            "channel": {"$ref": "#/channels/runs"},
            "summary": "Queue a run directly (prefer api.submit, which stores the run first).",
            "messages": [{"$ref": "#/channels/runs/messages/RunRequest"}],
        },
        "receiveRunEvents": {
            "action": "receive",
            "channel": {"$ref": "#/channels/events"},
            "messages": [{"$ref": "#/channels/events/messages/RunEvent"}],
        },
        "receiveRejections": {
            "action": "receive",
            "channel": {"$ref": "#/channels/rejected"},
            "messages": [{"$ref": "#/channels/rejected/messages/RunEvent"}],
        },
    }


def _add_api(
    n: Names, messages: dict[str, Any], channels: dict[str, Any], operations: dict[str, Any]
) -> None:
    """Each API operation: its channel, request and reply messages, and the send operation."""
    body_headers = _headers()
    reply_messages = channels["reply"]["messages"]
    reply_messages["ApiError"] = {"$ref": "#/components/messages/ApiError"}
    for op, request in OPERATIONS.items():
        req_name, reply_name = request.__name__, REPLIES[op].__name__
        messages[req_name] = _message(
            req_name, req_name, (request.__doc__ or "").split("\n")[0], body_headers
        )
        messages.setdefault(
            reply_name,
            _message(
                reply_name, reply_name, (REPLIES[op].__doc__ or "").split("\n")[0], body_headers
            ),
        )
        channel = f"api.{op}"
        channels[channel] = {
            "address": n.api_subject(op),
            "messages": {req_name: {"$ref": f"#/components/messages/{req_name}"}},
            "description": f"Control operation `{op}` (request/reply; served by every worker "
            f"and supervisor in queue group `{QUEUE_GROUP}`).",
        }
        reply_messages[reply_name] = {"$ref": f"#/components/messages/{reply_name}"}
        operations[f"api.{op}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{req_name}"}],
            "reply": {
                "channel": {"$ref": "#/channels/reply"},
                "messages": [
                    {"$ref": f"#/channels/reply/messages/{reply_name}"},
                    {"$ref": "#/channels/reply/messages/ApiError"},
                ],
            },
            "x-stalwart-reply": reply_name,
        }


def build_contract() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as plain JSON data."""
    n = Names(_NS)
    messages, channels, operations = _core_messages(), _core_channels(n), _core_operations()
    _add_api(n, messages, channels, operations)
    for channel in channels.values():
        if channel["address"] is not None:
            channel["address"] = _address(channel["address"])
            if params := _params(channel["address"]):
                channel["parameters"] = params
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": TITLE,
            "version": CONTRACT_VERSION,
            "description": (
                "How to talk to Stalwart over NATS from any language. Bodies are msgpack, or "
                f"JSON with header `{CONTENT_TYPE}: {JSON}`; a reply has its request's "
                f"encoding. Error replies carry header `{ERROR_HEADER}: <code>` and an "
                f"ApiError body. An operation answers within {OPERATION_TIMEOUT:g} s (plus a "
                "result's `wait`), else `unavailable`. Result pages: `data` is bytes (base64 "
                "in JSON) of the encoded result; concatenate pages until offset + len(data) "
                "== size. See docs/contract.md."
            ),
        },
        "defaultContentType": MSGPACK,
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "Any NATS server of the deployment (JetStream enabled).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": _schemas(), "messages": messages},
        "x-stalwart-error-codes": list(get_args(ErrorCode)),
        "x-stalwart-event-data": {
            kind: ({"$ref": _REF.format(name=t.__name__)} if t is not None else None)
            for kind, t in EVENT_DATA.items()
        },
    }


def render_contract() -> str:
    """The document as the committed file holds it: indented JSON and a final newline."""
    return json.dumps(build_contract(), indent=2, ensure_ascii=False) + "\n"
