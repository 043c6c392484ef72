"""``stalwart contract``: print or write the AsyncAPI document (contacts no server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stalwart.contract._asyncapi import render_contract


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Add ``contract`` to the ``stalwart`` command's subcommands (``common`` is unused: the
    document names no server)."""
    p = sub.add_parser("contract", help="print or write the wire contract (AsyncAPI 3.0 JSON)")
    _arguments(p)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if --output differs from the generated document (for CI)",
    )


def cmd_contract(args: argparse.Namespace) -> int:
    """Print the document, write it to ``--output``, or ``--check`` that file."""
    text = render_contract()
    if not args.output:
        if args.check:
            print("--check needs --output FILE", file=sys.stderr)
            return 2
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    if args.check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run stalwart contract -o {path}", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m stalwart.contract``: the same as ``stalwart contract``."""
    p = argparse.ArgumentParser(prog="python -m stalwart.contract", description=__doc__)
    _arguments(p)
    return cmd_contract(p.parse_args(argv))
