"""Counts the Python and C function calls of the process's main thread (``bench.step_cpu
--calls``): on a shared machine CPU time per step moves with the neighbours' load, a call
count does not. Written to ``$STEP_CALLS_OUT`` five times a second. Imported at start-up
only when this directory is on ``PYTHONPATH``; nothing happens without the variable."""

import os
import sys
import threading
import time

_out = os.environ.get("STEP_CALLS_OUT")
if _out:
    _n = [0]

    def _count(frame: object, event: str, arg: object) -> None:
        if event == "call" or event == "c_call":
            _n[0] += 1

    def _dump() -> None:
        while True:
            time.sleep(0.2)
            with open(_out + ".tmp", "w") as f:
                f.write(str(_n[0]))
            os.replace(_out + ".tmp", _out)

    sys.setprofile(_count)
    threading.Thread(target=_dump, daemon=True).start()
