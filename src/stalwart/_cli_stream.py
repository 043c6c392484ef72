"""``stalwart stream RUN_ID``: a run's streamed output, live, with resets applied."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from stalwart._exit_codes import EXIT_OK, EXIT_RUN_FAILED
from stalwart._json import dumps
from stalwart.client import Chunk, Reset, StreamEnd

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from stalwart.client import Client, StreamPart
    from stalwart.config import Settings

    ClientCall = Callable[
        [argparse.Namespace, Settings, Callable[[Client], Awaitable[int]]], Awaitable[int]
    ]

COMMANDS = ("stream",)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Add ``stream`` to the ``stalwart`` command's subcommands."""
    s = sub.add_parser(
        "stream",
        parents=[common],
        help="print a run's streamed text live (a dead attempt's text is marked and redone)",
    )
    s.add_argument("run_id")
    s.add_argument(
        "-o",
        "--output",
        choices=("text", "jsonl"),
        default="text",
        help="text: the model's text as it streams (default); jsonl: every stream part",
    )
    s.add_argument("--no-follow", action="store_true", help="stop at what has been stored so far")


async def dispatch(args: argparse.Namespace, settings: Settings, client_call: ClientCall) -> int:
    """Run ``stream`` (``client_call`` connects and closes the client)."""
    return await client_call(args, settings, lambda client: cmd_stream(args, client))


async def cmd_stream(args: argparse.Namespace, client: Client) -> int:
    """Print the parts of the run's stream: its text, or one JSON part a line."""
    handle = client.handle(args.run_id)
    await handle.status()  # an unknown run is an error, not an endless wait
    text = _TextOut()
    end: StreamEnd | None = None
    async for part in handle.stream(follow=not args.no_follow):
        if args.output == "jsonl":
            print(dumps(part.to_dict()), flush=True)
        else:
            text.show(part)
        if isinstance(part, StreamEnd):
            end = part
    text.close()
    if end is not None and end.status != "completed":
        print(f"run {end.status}: {end.error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


class _TextOut:
    """Token text as it comes; a line of its own for each step change and each reset."""

    def __init__(self) -> None:
        self.step = ""
        self.open_line = False

    def _write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        if text:
            self.open_line = not text.endswith("\n")

    def _newline(self) -> None:
        if self.open_line:
            self._write("\n")

    def show(self, part: StreamPart) -> None:
        if isinstance(part, Chunk):
            delta = _delta_text(part)
            if delta is None:
                return
            if part.step != self.step:
                self._newline()
                self.step = part.step
            self._write(delta)
        elif isinstance(part, Reset):
            self._newline()
            self._write(
                f"--- reset {part.step} (attempt {part.attempt}, {part.reason}): "
                "its text starts over ---\n"
            )
            self.step = ""

    def close(self) -> None:
        self._newline()


def _delta_text(part: Chunk) -> str | None:
    data: Any = part.data
    if part.type != "model.delta" or not isinstance(data, dict):
        return None
    text = data.get("text")
    return text if isinstance(text, str) else None
