"""Counts the Python and C function calls of the process's main thread (``bench.step_cpu
--calls``): on a shared machine CPU time per step moves with the neighbours' load, a call
count does not. Written to ``$STEP_CALLS_OUT`` five times a second. With
``$STEP_CALLS_BY`` set, the count per function is also written there (JSON, the most
called first), to see where the calls go. Imported at start-up only when this directory is
on ``PYTHONPATH``; nothing happens without the variable."""

import collections
import json
import os
import sys
import threading
import time

_out = os.environ.get("STEP_CALLS_OUT")
_by_out = os.environ.get("STEP_CALLS_BY")
if _out:
    _n = [0]
    _by: "collections.Counter[object]" = collections.Counter()

    def _count(frame: object, event: str, arg: object) -> None:
        if event == "call" or event == "c_call":
            _n[0] += 1

    def _count_by(frame: object, event: str, arg: object) -> None:
        if event == "call":
            _n[0] += 1
            _by[frame.f_code] += 1  # type: ignore[attr-defined]
        elif event == "c_call":
            _n[0] += 1
            _by[arg] += 1

    def _name(what: object) -> str:
        code = getattr(what, "co_qualname", None)
        if code is not None:
            path = what.co_filename.rsplit("/site-packages/", 1)[-1]  # type: ignore[attr-defined]
            return f"{code} ({path.rsplit('/src/', 1)[-1]}:{what.co_firstlineno})"  # type: ignore[attr-defined]
        return f"[C] {getattr(what, '__qualname__', what)!s}"

    def _dump() -> None:
        while True:
            time.sleep(0.2)
            with open(_out + ".tmp", "w") as f:
                f.write(str(_n[0]))
            os.replace(_out + ".tmp", _out)
            if _by_out:
                snap = dict.copy(_by)  # one C call: atomic while the main thread counts on
                top = sorted(((_name(k), v) for k, v in snap.items()), key=lambda kv: -kv[1])
                with open(_by_out + ".tmp", "w") as f:
                    json.dump(top, f, indent=0)
                os.replace(_by_out + ".tmp", _by_out)

    sys.setprofile(_count_by if _by_out else _count)
    threading.Thread(target=_dump, daemon=True).start()
