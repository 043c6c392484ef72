"""``stalwart conversations show ID``: a conversation's turns, holder and queue."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from stalwart._cli_output import OUTPUTS, Cell, ago, emit, table, use_color
from stalwart._exit_codes import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from stalwart.checkpoints import check_conversation_id

if TYPE_CHECKING:
    import argparse

    from stalwart.checkpoints import ConversationInfo
    from stalwart.client import Client

CONVERSATIONS_COMMANDS = ("conversations",)
"""The commands this module adds (client commands)."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``conversations show ID``."""
    c = sub.add_parser(
        "conversations",
        parents=[common],
        help="a conversation: its turns, the run holding it and the runs queued for it",
        description="docs/conversations.md",
    )
    c.add_argument("conversations_action", choices=("show",), metavar="ACTION", help="show")
    c.add_argument("conversation", help="the conversation id")
    c.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="output format")


def render(info: ConversationInfo) -> str:
    """The conversation as a FIELD / VALUE table."""
    now = time.time()
    rows: list[list[Cell]] = [
        ["conversation", info.id],
        ["turns", str(info.turns)],
        ["items", f"{info.items} ({info.committed} of completed turns)"],
        ["holder", (info.holder or "- (free)", "running" if info.holder else "")],
        ["queue", ", ".join(info.queue) or "-"],
        ["updated", ago(info.updated_at, now) if info.updated_at else "-"],
    ]
    return table(["FIELD", "VALUE"], rows, color=use_color())


async def cmd_conversations(args: argparse.Namespace, client: Client) -> int:
    """``stalwart conversations show ID [-o FORMAT]``."""
    conversation = check_conversation_id(args.conversation)
    if not conversation:
        print("stalwart conversations show: name the conversation", file=sys.stderr)
        return EXIT_USAGE
    info = await client.store.conversations.info(conversation)
    if info is None:
        print(f"stalwart conversations show: no conversation {conversation!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    emit([info], args.output, lambda rows: render(rows[0]), whole=info)
    return EXIT_OK
