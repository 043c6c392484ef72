"""Report text of the throughput side-by-side (section 4) and the growth curves (section 11)."""

from __future__ import annotations

from typing import Any

from bench._util import DASH, fmt

Table = list[list[str]]

SBS_LABELS = {
    "stalwart": "Stalwart, 1 worker",
    "floor": "floor: fenced appends, 64 callers",
    "dbos": "DBOS, queue (worker_concurrency 64)",
    "temporal_local": "Temporal, local activities",
    "temporal": "Temporal, activities",
}


def _table(headers: list[str], rows: Table) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _x(s: dict[str, Any] | None, digits: int = 2) -> str:
    return fmt(s, 1, digits, "x") if s and s.get("n") else "n/a"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:.0f} ms" if v >= 0.01 else f"{v * 1e3:.1f} ms"


def side_by_side(r: dict[str, Any], img: str | None) -> list[str]:
    """The side-by-side table (steps/s, ratios, CPU, latency) and its reading."""
    sy, ra, p = r["systems"], r["ratios"], r["params"]
    rates = [str(int(x)) for x in p["latency"]["rates"]]
    rows: Table = []
    for name, s in sy.items():
        lat = []
        for rate in rates:
            d = r["latency"].get(rate, {}).get(name)
            if d is None:
                lat.append("—")
            elif "skipped" in d:
                lat.append(f"not run ({d['skipped']})")
            else:
                lat.append(f"{_ms(d['p50'])} / {_ms(d['p99'])}")
        rows.append(
            [
                SBS_LABELS.get(name, name),
                fmt(s["steps_per_s"], 1, 0),
                "1" if name == "floor" else _x(ra.get(f"{name}/floor"), 3),
                "—" if name in ("stalwart", "floor") else _x(ra.get(f"stalwart/{name}"), 1),
                fmt(s.get("runs_per_s"), 1, 0) if "runs_per_s" in s else "—",
                "—" if name in ("stalwart", "floor") else _x(ra.get(f"stalwart/{name} runs"), 1),
                fmt(s["cpu_us_per_step"], 1, 0, " µs"),
                *lat,
            ]
        )
    pb = p["peer_batch"]
    text = [
        "### Side by side: the floor, DBOS and Temporal in the same run (issue #19)",
        "",
        f"One Stalwart worker with `--concurrency {p['concurrency']}` and, in the same run "
        f"and interleaved round by round ({p['reps']} rounds), the floor and the peers at "
        "the same concurrency. **Floor**: the same number of fenced journal appends as the "
        f"Stalwart batch, from {p['concurrency']} concurrent callers on the same Redis "
        "through `CheckpointStore.append` (the pipelined connection and fenced script every "
        "step goes through, no runtime around it). **DBOS**: workflows of trivial steps "
        f"through a queue (`worker_concurrency` {p['concurrency']}, polled every 0.1 s; "
        "the default 1 s would dominate the start latency), started from 16 threads of the "
        "same process, PostgreSQL with its default durable settings. **Temporal**: "
        "workflows of trivial local activities, and of regular activities, started from "
        "16 concurrent tasks in the worker's own process (the worker's default slots), on "
        "the dev server (SQLite). Batches: Stalwart "
        f"{p['stalwart_batch'][0]} runs x {p['stalwart_batch'][1]} steps and "
        f"{p['single_runs']} single-step runs; "
        + "; ".join(
            f"{SBS_LABELS[k].split(',')[0]} {SBS_LABELS[k].split(', ')[1]} {v[0]} x {v[1]} "
            f"and {p['peer_single'][k]} single-step"
            for k, v in pb.items()
            if k in sy
        )
        + ". Rates are over the middle 80 % of the step (workflow start) timestamps. "
        "CPU per step is the whole runtime's: Stalwart's worker + Redis + NATS, the floor "
        "process + Redis, DBOS's process + PostgreSQL, Temporal's process + dev server. "
        "Latency: runs (workflows) of "
        f"{p['latency']['steps']} steps started at a fixed rate for {p['latency']['seconds']:.0f} "
        "s while the workers run them; submit (enqueue, start) to the first step's start, "
        "p50 / p99. A peer is not run at a rate above half the runs/s it reached in the "
        "batch (a growing backlog would make the figure the queue's length).",
        "",
        _table(
            [
                "",
                "durable steps/s",
                "x floor",
                "Stalwart ÷ this",
                "started runs/s",
                "Stalwart ÷ this (runs)",
                "CPU / step",
                *[f"submit → first step at {x}/s (p50 / p99)" for x in rates],
            ],
            rows,
        ),
        "",
    ]
    if img:
        text += [f"![throughput side by side]({img})", ""]
    text += _sbs_reading(r)
    return text


def _sbs_reading(r: dict[str, Any]) -> list[str]:
    sy, ra = r["systems"], r["ratios"]
    out: list[str] = []
    fl = ra.get("stalwart/floor")
    if fl and fl.get("n"):
        out.append(
            f"Stalwart reaches {fl['median']:.2f}x the floor: the rest of a step's cost is the "
            "runtime around the append (the agent's step call, events, placement), in the "
            "worker's Python."
        )
    for name in ("dbos", "temporal_local", "temporal"):
        x = ra.get(f"stalwart/{name}")
        xr = ra.get(f"stalwart/{name} runs")
        if x and x.get("n") and name in sy:
            word = "more" if x["median"] >= 1 else "fewer"
            out.append(
                f"Against {SBS_LABELS[name]}: {x['median']:.1f}x the durable steps/s "
                f"({word}), {xr['median']:.1f}x the started runs/s"
                + (
                    " — the peer starts runs faster here."
                    if xr and xr.get("n") and xr["median"] < 1
                    else "."
                )
            )
    if out:
        out = [
            "Reading: "
            + " ".join(out)
            + " The peers run on the same two cores, client and worker in one process "
            "(Stalwart's client is the harness); the ratios, not the absolute rates, are "
            "what carries to another machine.",
            "",
        ]
    return out


def floor_columns(c: dict[str, Any]) -> list[str]:
    """The per-configuration floor and the ratio to it (section 4's main table)."""
    if "floor_per_s" not in c:
        return ["n/a", "n/a"]
    return [fmt(c["floor_per_s"], 1, 0), _x(c.get("over_floor"), 2)]


def _ok(point: dict[str, Any] | None) -> dict[str, Any] | None:
    """A point of a curve, or None when it is missing or failed."""
    return None if point is None or "error" in point else point


def _failed(curve: dict[str, Any]) -> str:
    return "failed: `" + str(curve["error"]).strip().splitlines()[-1] + "`"


def growth(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    """Section 11: the three curves; a curve that failed in the run is named as such."""
    text = [
        "How steps/s and CPU per step change as the load grows, each point one batch on "
        "this shared machine (rates over the middle 80 % of the journal's step timestamps; "
        "worker CPU from `/proc` over the batch divided by its steps, ramp-up included). "
        "Compare along a curve, within this run.",
        "",
    ]
    for key, fn, title in (
        ("inflight", _inflight_text, "Runs in flight per worker"),
        ("journal", _journal_text, "Journal length"),
        ("agents", _agents_text, "Agents"),
    ):
        curve = r.get(key)
        if not curve or "error" in curve:
            text += [f"**{title}.** " + (_failed(curve) if curve else "not run"), ""]
            continue
        text += fn(curve, img.replace("inflight", key) if img else None)
    text += _growth_reading(r)
    return "\n".join(text), []


def _inflight_text(inf: dict[str, Any], img: str | None) -> list[str]:
    n_steps, (ld_runs, ld_steps) = inf["steps_per_run"], inf["active_load"]
    rows: Table = []
    for c in (str(s) for s in inf["sizes"]):
        a, p = _ok(inf["active"].get(c)), _ok(inf["passivated"].get(c))
        rows.append(
            [
                c,
                f"{a['steps_per_s']:,.0f}" if a else "failed",
                f"{a['cpu_us_per_step']:.0f} µs" if a else "failed",
                f"{p['steps_per_s']:,.0f}" if p else "failed",
                f"{p['cpu_us_per_step']:.0f} µs" if p else "failed",
            ]
        )
    text = [
        "**Runs in flight per worker.** Active: one worker with `--concurrency` C and a "
        f"batch of C runs of {n_steps} trivial steps, all stepping at once. Passivated: P "
        "runs parked in a signal wait (passivated after 0.05 s, out of the worker's memory) "
        f"and a fixed active load of {ld_runs} runs x {ld_steps} steps on top, concurrency "
        "64.",
        "",
        _table(
            [
                "runs (C or P)",
                "active: steps/s",
                "active: worker CPU / step",
                f"P passivated + {ld_runs} active: steps/s",
                "worker CPU / step",
            ],
            rows,
        ),
        "",
    ]
    if img:
        text += [f"![growth: runs in flight]({img})", ""]
    return text


def _journal_text(jr: dict[str, Any], img: str | None) -> list[str]:
    jrows: Table = []
    for n in (str(x) for x in jr["lengths"]):
        d = jr["points"][n]
        jrows.append(
            [
                f"{int(n):,}",
                fmt(d["resume"], 1e3, 0, " ms"),
                f"{d['step_gap_us']:.0f} µs",
                f"{d['cpu_us_per_step']:.0f} µs",
            ]
        )
    text = [
        f"**Journal length.** {jr['runs']} runs with L steps in their journal passivate, "
        f"are woken by a signal and take {jr['after']} new steps each (one worker): resume "
        "is signal to the first new step's start (placement, journal read and replay "
        "included), then the median time between two new steps of a run, and the worker's "
        "CPU per new step (the resume's replay included).",
        "",
        _table(
            [
                "steps in the journal",
                f"resume (median [min{DASH}max])",
                "between new steps",
                "worker CPU / new step",
            ],
            jrows,
        ),
        "",
    ]
    if img:
        text += [f"![growth: journal length]({img})", ""]
    return text


def _agents_text(ag: dict[str, Any], img: str | None) -> list[str]:
    arows: Table = []
    w = ag["workers"]
    for a in (str(x) for x in ag["counts"]):
        d = ag["points"][a]
        arows.append(
            [
                a,
                f"{d['steps_per_s']:,.0f}",
                f"{d['cpu_us_per_step']:.0f} µs",
                f"{d['idle_msgs_per_s']:.1f}",
                f"{d['idle_msgs_per_s'] / (int(a) * w):.2f}",
                f"{d['idle_worker_cpu'] * 100:.1f} %",
            ]
        )
    text = [
        f"**Agents on the same {w} workers.** A batch spread round-robin over A agents "
        "(each its own pull feed on each worker), then nothing running: NATS messages per "
        f"second through the server (`/varz` in + out) over {ag['window']:.0f} s (a "
        "worker's pull requests expire after half the lease TTL, 2.5 s by default, so the "
        "window holds several re-pulls), and the workers' CPU while idle.",
        "",
        _table(
            [
                "agents",
                "steps/s",
                "worker CPU / step",
                "idle NATS msgs/s",
                "idle msgs/s per agent x worker",
                "idle worker CPU (of one core)",
            ],
            arows,
        ),
        "",
    ]
    if img:
        text += [f"![growth: agents]({img})", ""]
    return text


def _ratio(points: dict[str, Any], lo: str, hi: str, key: str) -> float | None:
    a, b = _ok(points.get(lo)), _ok(points.get(hi))
    if not a or not b or not a.get(key):
        return None
    return float(b[key] / a[key])


def _growth_reading(r: dict[str, Any]) -> list[str]:
    empty: dict[str, Any] = {"sizes": [0], "active": {}, "passivated": {}, "lengths": [0],
                             "points": {}, "counts": [0], "workers": 0}  # fmt: skip
    inf, jr, ag = (_ok(r.get(k)) or empty for k in ("inflight", "journal", "agents"))
    lo, hi = str(inf["sizes"][0]), str(inf["sizes"][-1])
    parts = []
    sa = _ratio(inf["active"], lo, hi, "steps_per_s")
    ca = _ratio(inf["active"], lo, hi, "cpu_us_per_step")
    if sa and ca:
        parts.append(
            f"From {lo} to {hi} active runs per worker, steps/s changes {sa:.2f}x and worker "
            f"CPU per step {ca:.2f}x."
        )
    sp = _ratio(inf["passivated"], lo, hi, "steps_per_s")
    cp = _ratio(inf["passivated"], lo, hi, "cpu_us_per_step")
    if sp and cp:
        parts.append(
            f"With {hi} instead of {lo} passivated runs beside the same active load, steps/s "
            f"changes {sp:.2f}x and CPU per step {cp:.2f}x."
        )
    l0, l1 = str(jr["lengths"][0]), str(jr["lengths"][-1])
    g = _ratio(jr["points"], l0, l1, "step_gap_us")
    if g:
        r0 = jr["points"][l0]["resume"]["median"]
        r1 = jr["points"][l1]["resume"]["median"]
        parts.append(
            f"A new step at journal length {int(l1):,} takes {g:.2f}x the time it takes at "
            f"{l0}; the resume goes from {r0 * 1e3:.0f} ms to {r1 * 1e3:.0f} ms."
        )
    a0, a1 = str(ag["counts"][0]), str(ag["counts"][-1])
    m = _ratio(ag["points"], a0, a1, "idle_msgs_per_s")
    s = _ratio(ag["points"], a0, a1, "steps_per_s")
    if m and s:
        grows = "grows with the agents" if m > 1.5 else "does not grow with the agents"
        parts.append(
            f"From {a0} to {a1} agents on {ag['workers']} workers, steps/s changes {s:.2f}x "
            f"and idle NATS traffic {m:.1f}x ({ag['points'][a1]['idle_msgs_per_s']:.0f} "
            f"msgs/s with nothing running): the idle cost {grows}."
        )
    return ["Reading: " + " ".join(parts), ""] if parts else []
