"""The operator commands of ``stalwart`` end to end: runs filters and paging, workers, agents,
``-o`` on every read command, ``events --all``, colour rules, completion, the drained-run
truth. Real subprocesses, real servers."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from stalwart import __version__
from tests.conftest import ROOT
from tests.helpers import eventually, execs, gate_key, rid
from tests.test_cli import _env, _json_lines, run_cli
from tests.test_cli import cli as cli  # a fixture

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

    from stalwart import Client, Settings
    from tests.conftest import WorkerFactory

ESC = "\x1b["


async def _queued(client: Client) -> list[str]:
    """Six runs nothing serves (4 of agent x, 2 of y), oldest first; the second cancelled."""
    ids = [f"q{i}-{rid()[:6]}" for i in range(6)]
    for i, run_id in enumerate(ids):
        await client.submit("x" if i < 4 else "y", i, run_id=run_id, require_registered=False)
    assert await client.handle(ids[1]).cancel("not needed") == "cancelled"
    return ids


async def test_runs_filters_paging_and_formats(cli: Any, client: Client) -> None:
    ids = await _queued(client)

    res = await cli("runs", "-o", "json", "--agent", "y")
    assert res.code == 0, res
    page = json.loads(res.out)
    assert [r["run_id"] for r in page["runs"]] == [ids[5], ids[4]]
    assert page["next_cursor"] is None
    first = page["runs"][0]
    assert first["placement"] == "queued" and first["owner"] == ""
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", first["created_at_iso"])

    queries = {
        ("--status", "cancelled"): [ids[1]],
        ("--status", "accepted,cancelled", "--agent", "x"): [ids[3], ids[2], ids[1], ids[0]],
        ("--status", "cancelled", "--status", "accepted"): ids[::-1],
        ("--since", "1h", "--search", ids[4][-6:]): [ids[4]],
        ("--until", "1h"): [],
    }
    answers = await asyncio.gather(*(cli("runs", "-o", "jsonl", *q) for q in queries))
    for (query, expected), res in zip(queries.items(), answers, strict=True):
        assert res.code == 0, (query, res)
        assert [r["run_id"] for r in _json_lines(res.out)] == expected, (query, res)

    # Paging: the next cursor goes to stderr (or in the json document), and leads on.
    res = await cli("runs", "-o", "jsonl", "--limit", "4")
    assert [r["run_id"] for r in _json_lines(res.out)] == ids[::-1][:4], res
    cursor = re.search(r"--cursor (\S+)", res.err)
    assert cursor, res
    res = await cli("runs", "-o", "jsonl", "--limit", "4", "--cursor", cursor.group(1))
    assert [r["run_id"] for r in _json_lines(res.out)] == ids[::-1][4:], res
    assert "--cursor" not in res.err, res

    # A table: piped, so no escape codes; columns aligned from the content.
    res = await cli("runs", "--agent", "x")
    assert res.code == 0 and ESC not in res.out, res
    lines = res.out.splitlines()
    assert lines[0].split()[:3] == ["RUN", "ID", "AGENT"] and len(lines) == 5, res
    column = lines[0].index("STATUS")
    assert {line[column:].split()[0] for line in lines[1:]} == {"accepted", "cancelled"}
    assert all(ids[1] in line for line in lines if "cancelled" in line)
    assert "- (queued)" in lines[1], res

    bad = {
        ("--since", "yesterday"): "expected a time like 10m",
        ("--status", "runing"): "unknown run status 'runing'",
        ("--cursor", "nonsense"): "invalid cursor",
        ("-o", "yaml"): "invalid choice",
    }
    refused = await asyncio.gather(*(cli("runs", *args) for args in bad))
    for message, res in zip(bad.values(), refused, strict=True):
        assert res.code == 2, res  # EXIT_USAGE
        assert message in res.err and "Traceback" not in res.err, res


async def test_every_read_command_takes_output(
    cli: Any, client: Client, workers: WorkerFactory
) -> None:
    await workers("w1", STALWART_LANES="default,hi")
    handle = await client.submit("fast", 1)
    assert await handle.result(timeout=20) == 6
    run_id = handle.run_id
    documents = {
        "status": ["status", run_id],
        "history": ["history", run_id],
        "replay": ["replay", run_id, "tests.apps:app"],
        "approve": ["approve", run_id],
        "runs": ["runs"],
        "workers": ["workers"],
        "agents": ["agents"],
    }
    # Every read command, every format (a few at a time: each is a process start-up, and
    # too many at once on a loaded machine only makes each slower).
    calls = [(name, fmt) for name in documents for fmt in ("json", "jsonl", "table")]
    some = asyncio.Semaphore(4)

    async def call(name: str, fmt: str) -> Any:
        async with some:
            return await cli(*documents[name], "-o", fmt, timeout=90)

    results = await asyncio.gather(*(call(n, fmt) for n, fmt in calls))
    out: dict[tuple[str, str], str] = {}
    for (name, fmt), res in zip(calls, results, strict=True):
        assert res.code == 0, (name, fmt, res)
        assert ESC not in res.out, (name, fmt, res)  # piped: never an escape code
        if fmt == "json":
            json.loads(res.out)  # one JSON document
        elif fmt == "jsonl":
            _json_lines(res.out)  # JSON lines
        out[name, fmt] = res.out
    status = json.loads(out["status", "json"])
    assert status["status"] == "completed" and status["placement"] == "ended"
    assert "placement" in out["status", "table"] and "completed" in out["status", "table"]
    (w,) = json.loads(out["workers", "json"])
    assert w["worker_id"] == "w1" and w["free"] == w["capacity"] - w["active"]
    assert out["workers", "table"].splitlines()[1].startswith("w1 ")
    agents = {(a["agent"], a["lane"]): a for a in json.loads(out["agents", "json"])}
    assert agents["fast", ""]["workers"] == ["w1"] and agents["fast", ""]["completed"] == 1
    hi = agents["fast", "hi"]  # the lane's own consumer, served by the same worker
    assert (hi["consumer"], hi["workers"], hi["pending"]) == ("agent_fast@hi", ["w1"], 0)
    # --json stays an alias of -o json where it existed.
    alias, events = await asyncio.gather(
        cli("history", run_id, "--json"), cli("events", run_id, "-o", "table")
    )
    assert json.loads(alias.out)["run_id"] == run_id
    assert events.code == 0 and "run.completed" in events.out, events


async def test_events_all_with_agent_and_resume_position(
    cli: Any, client: Client, workers: WorkerFactory
) -> None:
    await workers()
    fast = await client.submit("fast", 1)
    typed = await client.submit("typed", {"sku": "a", "qty": 1})
    await fast.result(timeout=20)
    await typed.result(timeout=20)

    res = await cli("events", "--all", "--agent", "fast", "-o", "jsonl")
    assert res.code == 0, res
    events = _json_lines(res.out)
    assert {e["run_id"] for e in events} == {fast.run_id}
    assert {e["agent"] for e in events} == {"fast"}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > 0
    assert events[-1]["type"] == "run.completed"
    # Resume after a position: only what came after it.
    res = await cli("events", "--all", "--after", str(seqs[-2]), "--agent", "fast")
    assert [e["seq"] for e in _json_lines(res.out)] == [seqs[-1]], res
    every = _json_lines((await cli("events", "--all")).out)
    assert {e["run_id"] for e in every} == {fast.run_id, typed.run_id}

    misuses = (["--all", fast.run_id], [fast.run_id, "--after", "3"], [])
    for res in await asyncio.gather(*(cli("events", *args) for args in misuses)):
        assert res.code == 2 and "Traceback" not in res.err, res


def _under_pty(args: list[str], env: dict[str, str]) -> str:
    """Run ``stalwart ARGS`` with its stdout on a terminal; what it printed."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stalwart", *args],
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.returncode == 0, proc.stderr.decode()
        return b"".join(chunks).decode()
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)


async def test_colour_only_on_a_terminal_without_no_color(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    await _queued(client)
    assert settings.nats_url and settings.redis_url
    args = ["runs", "--nats-url", settings.nats_url, "--redis-url", settings.redis_url]
    args += ["--namespace", settings.namespace]
    env = {k: v for k, v in _env(tmp_path).items() if k != "NO_COLOR"}
    coloured = await asyncio.to_thread(_under_pty, args, env)
    assert ESC in coloured and "cancelled" in coloured
    plain = await asyncio.to_thread(_under_pty, args, {**env, "NO_COLOR": "1"})
    assert ESC not in plain and "cancelled" in plain
    # An empty NO_COLOR does not count (no-color.org).
    assert ESC in await asyncio.to_thread(_under_pty, args, {**env, "NO_COLOR": ""})


async def test_version_and_completion_scripts(tmp_path: Path) -> None:
    env = _env(tmp_path)
    res = await run_cli("--version", env=env)
    assert res.code == 0 and res.out.strip() == f"stalwart {__version__}", res
    scripts = {}
    for shell in ("bash", "zsh", "fish"):
        res = await run_cli("completion", shell, env=env)
        assert res.code == 0 and "runs" in res.out, res
        path = tmp_path / f"stalwart.{shell}"
        path.write_text(res.out)
        scripts[shell] = path
    check = await asyncio.to_thread(
        subprocess.run, ["bash", "-n", str(scripts["bash"])], capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    # The bash function really completes: subcommands, then a subcommand's options and values.
    probe = (
        f"source {scripts['bash']}; "
        'COMP_WORDS=(stalwart wor); COMP_CWORD=1; _stalwart; echo "${COMPREPLY[*]}"; '
        'COMP_WORDS=(stalwart runs --sta); COMP_CWORD=2; _stalwart; echo "${COMPREPLY[*]}"; '
        "COMP_WORDS=(stalwart agents -o ''); COMP_CWORD=3; _stalwart; echo \"${COMPREPLY[*]}\""
    )
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.splitlines() == ["worker workers", "--status", "table json jsonl"], done
    for shell, flag in (("zsh", "-n"), ("fish", "--no-execute")):
        if shutil.which(shell):
            check = await asyncio.to_thread(
                subprocess.run, [shell, flag, str(scripts[shell])], capture_output=True, timeout=30
            )
            assert check.returncode == 0, check.stderr


async def test_a_drained_run_is_not_shown_on_its_old_worker(
    cli: Any, client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    # The audit of #16: runs whose worker had drained still showed `running` there.
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("sleepy", 2, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "step:wait"))
    a.proc.terminate()  # SIGTERM: drain; no other worker takes the run
    await counters.lpush(gate_key(run_id, "in"), "1")  # the step in flight ends
    assert await asyncio.to_thread(a.proc.wait, 20) == 0

    status = json.loads((await cli("status", run_id)).out)
    assert status["status"] == "running" and status["worker"] == "a"  # the record's word
    assert status["owner"] == "" and status["placement"] == "awaiting_worker"  # the truth
    table, stuck = await asyncio.gather(
        cli("runs"), cli("runs", "--placement", "awaiting_worker", "-o", "jsonl")
    )
    (line,) = [row for row in table.out.splitlines() if run_id in row]
    assert status["build"] and f"- (awaiting build {status['build']})" in line, table
    assert [r["run_id"] for r in _json_lines(stuck.out)] == [run_id], stuck

    await workers("b")
    await counters.lpush(gate_key(run_id, "in"), "2")
    assert await handle.result(timeout=30) == 2
    detail = json.loads((await cli("runs", "--search", run_id, "-o", "json")).out)["runs"][0]
    assert detail["status"] == "completed" and detail["worker"] == "b"
    from stalwart.operations import run_detail

    epochs = (await run_detail(client, run_id)).epochs
    assert [(e.worker, e.cause) for e in epochs] == [("a", "first"), ("b", "handover")]
