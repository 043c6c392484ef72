"""A client in Node.js drives runs end to end with only the ``nats`` package and the contract.

``tests/node/client.mjs`` reads every subject, header and error code from
docs/contract/asyncapi.json: it submits a run with a JSON body, follows its events, signals
it, cancels another run, reads a 2 MiB result in pages (the server's max_payload is the
default 1 MiB) and gets structured errors. Real servers, worker processes of
``tests.apps_wire:app``. In CI (``CI`` set, as ``.ci/run`` does, which runs ``npm ci``) a
missing ``node`` or ``node_modules`` fails the test; elsewhere it is skipped with the fix.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from stalwart import Client, Settings
from tests.conftest import Servers, worker_pool

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "tests" / "node"
HINT = "install Node.js 18+ and run `npm ci --prefix tests/node`"
CONTRACT = ROOT / "docs" / "contract" / "asyncapi.json"


def _require(ok: bool, what: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: .ci/run must provide it ({HINT})")
    pytest.skip(f"{what} missing: {HINT}")


async def test_a_node_client_submits_follows_signals_cancels_and_pages(
    settings: Settings, servers: Servers, client: Client
) -> None:
    node = shutil.which("node")
    _require(node is not None, "node")
    _require(
        (NODE_DIR / "node_modules" / "nats" / "package.json").exists(), "tests/node/node_modules"
    )
    assert node is not None and settings.nats_url
    async with worker_pool("tests.apps_wire:app", settings, servers, client) as start:
        await start()
        env = {
            **os.environ,
            "NATS_URL": settings.nats_url,
            "STALWART_NAMESPACE": settings.namespace,
            "STALWART_CONTRACT": str(CONTRACT),
        }
        proc = await asyncio.create_subprocess_exec(
            node,
            "client.mjs",
            cwd=NODE_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 170)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, f"node failed ({proc.returncode}):\n{err.decode()[-4000:]}"
    summary = json.loads(out.decode().strip().splitlines()[-1])

    run_id = summary["submitted"]["run_id"]
    assert summary["submitted"] == {"run_id": run_id, "agent": "greet", "lane": ""}
    events = summary["events"]
    for kind in (
        "run.accepted",
        "run.started",
        "step.completed",
        "wait.started",
        "signal.received",
    ):
        assert kind in events, events
    assert events[-1] == "run.completed"
    assert summary["event_agents"] == ["greet"]
    assert summary["signal"]["outcome"] in ("stored", "woke")
    assert summary["status"] == "completed"
    assert summary["result"]["value"] == {"greeting": "hello node", "go": {"ok": True}}
    # The Python client reads the same run the same way.
    assert await client.handle(run_id).result(timeout=5) == summary["result"]["value"]

    assert summary["cancel"]["outcome"] in ("cancelled", "requested")
    assert summary["cancelled"]["status"] == "cancelled"
    assert summary["cancelled"]["error"]["message"] == "not needed"

    big = summary["big"]
    assert big["status"] == "completed" and big["all_x"]
    assert big["blob_length"] == 2 * 1024 * 1024
    assert big["size"] > big["max_payload"] and big["pages"] >= 3

    assert summary["unknown"] == "unknown_run"
    assert summary["unknown_agent"] == "unknown_agent"


async def _validate(node: str, path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        node,
        "validate.mjs",
        str(path),
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-4000:]
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return lines[:-1], lines[-1]


async def test_the_contract_is_valid_asyncapi_3(tmp_path: Path) -> None:
    """The AsyncAPI initiative's parser accepts the document with no error or warning, and
    refuses a broken copy (so it really checks)."""
    node = shutil.which("node")
    _require(node is not None, "node")
    _require(
        (NODE_DIR / "node_modules" / "@asyncapi" / "parser" / "package.json").exists(),
        "tests/node/node_modules",
    )
    assert node is not None
    diagnostics, verdict = await _validate(node, CONTRACT)
    assert verdict == {"valid": True, "errors": 0}, diagnostics
    assert not [d for d in diagnostics if d["severity"] <= 1], diagnostics

    broken = json.loads(CONTRACT.read_text())
    broken["operations"]["api.submit"]["channel"] = {"$ref": "#/channels/nowhere"}
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(broken))
    _, verdict = await _validate(node, bad)
    assert verdict["valid"] is False
