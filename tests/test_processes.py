"""``stalwart.testing`` processes: their logs do not outlive the process that started them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stalwart.testing import StalwartProcess

SCRIPT = """
from stalwart.testing import StalwartProcess
kept = StalwartProcess(["--help"], name="kept", keep_log=True)
dropped = StalwartProcess(["--help"], name="dropped")
for p in (kept, dropped):
    p.start().proc.wait()
print(kept.log_path, dropped.log_path)
"""


def test_a_log_is_readable_until_close_and_then_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STALWART_KEEP_LOGS", raising=False)
    proc = StalwartProcess(["--help"], name="help").start()
    assert proc.proc is not None and proc.proc.wait(timeout=60) == 0
    assert "worker" in proc.log_text()  # the CLI's usage went to the log
    proc.close()
    assert not proc.log_path.exists() and proc.log_text() == ""


def test_logs_are_removed_when_the_starting_process_exits_unless_kept() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STALWART_KEEP_LOGS"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    kept, dropped = (Path(p) for p in out.stdout.split())
    try:
        assert kept.exists() and "worker" in kept.read_text()
        assert not dropped.exists()
    finally:
        kept.unlink(missing_ok=True)
