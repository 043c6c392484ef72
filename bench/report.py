"""Turns a results dict into ``docs/benchmarks.md`` (full mode) and PNG plots.

Quick mode writes the same report under ``bench/results/`` so CI exercises this code
without touching the docs. Plots need matplotlib; without it the report says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import plots
from bench._util import DASH, ROOT, fmt

Table = list[list[str]]

OVERHEAD_LABELS = {
    "stalwart": "Stalwart `ctx.step`",
    "floor_store": "`CheckpointStore.append` alone (the journal pipe, no step around it)",
    "floor_async": "floor: raw `EVALSHA` fenced append, redis.asyncio",
    "floor_sync": "floor: raw `EVALSHA` fenced append, blocking redis-py",
}
AOF_LABELS = {"off": "AOF off", "everysec": "AOF everysec", "always": "AOF always"}


def _table(headers: list[str], rows: Table) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _us(s: dict[str, Any] | None, digits: int = 0) -> str:
    return fmt(s, 1e6, digits, " µs")


def _ms(s: dict[str, Any] | None, digits: int = 1) -> str:
    return fmt(s, 1e3, digits, " ms")


def _sec(s: dict[str, Any] | None, digits: int = 2) -> str:
    return fmt(s, 1.0, digits, " s")


def _x(s: dict[str, Any] | None, digits: int = 1) -> str:
    return fmt(s, 1.0, digits, "\u00d7")


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else ("**met**" if flag else "**missed**")


def _kb(n: float) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1024 * 1024 * 10 else f"{n / 1024 / 1024:,.1f} MiB"


def _err(section: dict[str, Any] | None) -> str | None:
    if section is None:
        return "not run"
    if "error" in section:
        return "failed:\n\n```\n" + str(section["error"])[-3000:] + "\n```"
    return None


# --------------------------------------------------------------------------- sections


def _overhead(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    sysd, rat = r["systems"], r["ratios"]
    rows: Table = []
    for aof, label in AOF_LABELS.items():
        for kind, klabel in OVERHEAD_LABELS.items():
            s = sysd.get(f"{kind}/{aof}")
            if s is None:
                continue
            ratio = "—" if kind == "stalwart" else _x(rat.get(f"{aof}/{kind}"))
            rows.append(
                [label, klabel, _us(s["per_step"]), _us(s.get("mean")), _us(s["overhead"]), ratio]
            )
    peers = {
        "dbos": "DBOS step (PostgreSQL, default fsync)",
        "temporal_activity": "Temporal activity (dev server, SQLite)",
        "temporal_local": "Temporal local activity (dev server, SQLite)",
    }
    for key, label in peers.items():
        if key in sysd:
            s = sysd[key]
            rows.append(
                ["peer", label, _us(s["per_step"]), _us(s.get("mean")), _us(s["overhead"]), "—"]
            )
    text = [
        f"A run of N = {r['n']} trivial steps; each step timed inside the run (queueing "
        "and placement excluded; Temporal: the time between consecutive activities, from "
        "their own timestamps). 'Mean' is the run's time divided by its steps, 'median "
        "step' the median of its steps; overhead is the mean minus one plain call of the "
        "same function. The mean is the headline because Stalwart sends run events in "
        "batches (every 2 ms): a few steps of each run carry a batch, and the median step "
        "alone would flatter it. "
        f"{r['reps']} rounds after one warm-up round; each round runs every system once, "
        "so ratios are paired within a round. The right-hand column is Stalwart's overhead "
        "divided by the floor's on the same Redis (paired by round).",
        "",
        _table(
            ["Redis", "what", "median step", "mean", "overhead per step", "Stalwart ÷ this"],
            rows,
        ),
        "",
    ]
    ratio_rows: Table = []
    for aof, label in AOF_LABELS.items():
        for peer, plabel in (
            ("dbos", "DBOS"),
            ("temporal_activity", "Temporal activity"),
            ("temporal_local", "Temporal local activity"),
        ):
            if f"{peer}/{aof}" in rat:
                ratio_rows.append([f"{plabel} ÷ Stalwart ({label})", _x(rat[f"{peer}/{aof}"])])
    if ratio_rows:
        text += ["Peers' overhead per step divided by Stalwart's (paired by round):", ""]
        text += [_table(["ratio", "median [min\u2013max]"], ratio_rows), ""]
    text += _overhead_notes(r)
    if img:
        text += [f"![step overhead]({img})", ""]
    text += _overhead_parts(r)
    return "\n".join(text), _overhead_targets(r)


def _overhead_notes(r: dict[str, Any]) -> list[str]:
    """Stalwart against stricter floors, and why fsync-always bounds the DBOS ratio."""
    rat = r["ratios"]
    out: list[str] = []
    strict = []
    for aof, label in AOF_LABELS.items():
        pipe = rat.get(f"{aof}/floor_store")
        sync = rat.get(f"{aof}/floor_sync")
        if pipe and sync and pipe.get("n") and sync.get("n"):
            strict.append(f"{label}: {_x(sync)} and {_x(pipe)}")
    if strict:
        out += [
            "The target's floor is a raw `EVALSHA` through redis.asyncio, which spends about "
            "40 µs of Python per call on top of the round trip. Against leaner floors "
            "measured in the same rounds the ratio is higher: Stalwart's overhead divided by "
            "the blocking redis-py call's and by the journal pipe's bare fenced append ("
            + "; ".join(strict)
            + "). What separates `ctx.step` from the bare append is the step's own Python "
            "(its key, fingerprint and journal entry, the events, the batch flush that some "
            "steps carry), shown in the profile below.",
            "",
        ]
    bound = _dbos_over_floor(r, "always")
    if bound is not None:
        out += [
            "With `appendfsync always` every durable write waits for the disk's fsync, as "
            "DBOS's PostgreSQL commits do: a serial run's step cannot be cheaper than one "
            f"fsync'ed append, and the raw fenced append alone is {bound:.1f}\u00d7 below "
            "DBOS there. Stalwart's `ctx.step` costs what that append costs (the ratio to "
            "the floor above); Redis folds the appends of concurrent runs into one fsync "
            "per event-loop turn, so concurrent runs share an fsync rather than paying one each.",
            "",
        ]
    return out


def _profile_tables(p: dict[str, Any], what: str) -> list[str]:
    if not p:
        return []
    if not p.get("samples"):
        return [f"py-spy ({what}): {p.get('error', 'no samples')}", ""]
    return [
        f"py-spy profile of the worker {what} ({p['samples']} samples):",
        "",
        _table(
            ["where the worker's time goes (inclusive)", "share of samples"],
            [[k, f"{v * 100:.0f} %"] for k, v in p.get("phases", [])],
        ),
        "",
        _table(
            ["library (self time)", "share of samples"],
            [[k, f"{v * 100:.0f} %"] for k, v in p.get("areas", [])],
        ),
        "",
    ]


def _overhead_parts(r: dict[str, Any]) -> list[str]:
    """What Stalwart's overhead is made of: micro costs, and a profile of a serial run."""
    out = ["### What the overhead is made of", ""]
    micro = r.get("micro") or {}
    if micro:
        rows = [["`fingerprint(name, args, kwargs)`", f"{micro['fingerprint'] * 1e6:.2f} µs"]]
        if "result_type" in micro:
            rows.append(
                [
                    "`_result_type(fn)` (the step function's return annotation)",
                    f"{micro['result_type'] * 1e6:.2f} µs",
                ]
            )
        out += [
            "Pure-Python pieces every `ctx.step` call runs, live and on replay (timed in "
            "the harness process):",
            "",
            _table(["per `ctx.step` call", "cost"], rows),
            "",
        ]
    out += _profile_tables(
        r.get("profile") or {}, "while one run executes trivial steps back to back (AOF everysec)"
    )
    return out


def _dbos_over_floor(r: dict[str, Any], aof: str) -> float | None:
    """DBOS's overhead over the raw fenced append's on the same Redis: the best ratio
    any client of that Redis could reach."""
    floor = r["systems"].get(f"floor_async/{aof}")
    dbos = r["systems"].get("dbos")
    if not floor or not dbos or not floor["overhead"].get("median"):
        return None
    return float(dbos["overhead"]["median"] / floor["overhead"]["median"])


def _overhead_targets(r: dict[str, Any]) -> list[list[str]]:
    rat = r["ratios"]
    targets: list[list[str]] = []
    for aof, label in AOF_LABELS.items():
        fl = rat.get(f"{aof}/floor_async")
        if fl and fl.get("n"):
            targets.append(
                [
                    f"overhead within 2\u00d7 of the fenced-XADD floor ({label})",
                    _x(fl),
                    _ok(fl["median"] <= 2.0),
                ]
            )
    for aof, label in AOF_LABELS.items():
        d = rat.get(f"dbos/{aof}")
        if d and d.get("n"):
            measured = _x(d)
            bound = _dbos_over_floor(r, aof)
            if bound is not None and bound < 10.0:
                measured += (
                    f" (the raw fenced append alone: {bound:.1f}\u00d7, so 10\u00d7 is out "
                    "of reach at this durability on this disk)"
                )
            targets.append(
                [f"\u2265 10\u00d7 below DBOS ({label})", measured, _ok(d["median"] >= 10.0)]
            )
    return targets


def failover_cases(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The failover cases of a result, also of one saved before the liveness probes
    (keyed by TTL only: those ran without probes)."""
    if "cases" in r:
        return list(r["cases"])
    return [
        {**d, "label": "ttl-only", "ttl": int(ttl), "liveness_interval": 0.0}
        for ttl, d in r["ttls"].items()
    ]


def _failover(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    rows: Table = []
    targets: list[list[str]] = []
    cases = failover_cases(r)
    for d in cases:
        c = d["to_step_completed"]
        s = d["to_step_started"]
        ttl, interval = d["ttl"], d["liveness_interval"]
        detection = f"probes every {interval:g} s" if interval > 0 else "lease expiry only"
        ex = d.get("executions")
        rows.append(
            [
                f"{ttl} s",
                detection,
                str(c["n"]),
                f"{s['median']:.2f} s",
                f"{c['median']:.2f} s",
                f"{c['p90']:.2f} s",
                f"{c['p99']:.2f} s",
                f"{c['min']:.2f}{DASH}{c['max']:.2f} s",
                f"{ex['extra_starts']} / {ex['started_after_completed']}" if ex else "n/a",
            ]
        )
        if interval > 0:
            targets.append(
                [
                    f"failover p50 ≤ {d['target_p50']:g} s (TTL {ttl} s, liveness probes)",
                    f"{c['median']:.2f} s",
                    _ok(c["median"] <= d["target_p50"]),
                ]
            )
            continue
        targets.append(
            [
                f"failover p50 ≤ TTL + 0.5 s (TTL {ttl} s, no probes)",
                f"{c['median']:.2f} s",
                _ok(c["median"] <= d["target_p50"]),
            ]
        )
        targets.append(
            [
                f"failover p99 ≤ TTL + 1.5 s (TTL {ttl} s, no probes)",
                f"{c['p99']:.2f} s",
                _ok(c["p99"] <= d["target_p99"]),
            ]
        )
    text = [
        f"Three worker processes and a `stalwart supervisor` process; one long run of "
        f"{r['step_seconds'] * 1000:.0f} ms steps. SIGKILLs of the run's owner "
        "('kills' per case), each 0.5\u20131.5 s (random) after the previous failover, a replacement "
        "worker started under a new id after each kill. Time from the SIGKILL to the first "
        "`step.started` and the first `step.completed` event from another worker (event "
        "timestamps are the workers' wall clocks, on this same machine). Detection: the "
        "supervisor's liveness probes (`liveness_interval`; a worker the NATS server twice "
        "reports gone has its leases revoked at once) or, with them off, lease expiry.",
        "",
        _table(
            [
                "lease TTL",
                "detection",
                "kills",
                "to step started (p50)",
                "to step completed (p50)",
                "p90",
                "p99",
                "min\u2013max",
                "extra step starts / after completion",
            ],
            rows,
        ),
        "",
        "Without probes a lease expires between 2/3 TTL and one TTL after the dead worker's "
        "last renewal (renewals every TTL/3), so failover can be shorter than the TTL. "
        "'Extra step starts' counts step bodies started more than once (the step in flight "
        "at a kill runs again: at most one per kill; from the events, which can miss a start "
        "on the killed worker); 'after completion' counts steps started again after they "
        "completed, which the journal forbids. p99 is interpolated between the two largest "
        "values.",
        "",
    ]
    if img:
        text += [f"![failover]({img})", ""]
    return "\n".join(text), targets


def _resume(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    st, dbos, tmp = r["stalwart"], r.get("dbos", {}), r.get("temporal", {})
    rows: Table = []
    for n in r["sizes"]:
        k = str(n)
        s = st.get(k, {})
        d = dbos.get(k, {})
        t = tmp.get(k, {})
        tcell = _sec(t.get("replay")) if t else "—"
        if t and t.get("history") == "synthetic":
            tcell += " (synthetic history)"
        rows.append(
            [
                f"{n:,}",
                _ms(s.get("placement_to_live")),
                _ms(s.get("publish_to_live")),
                _sec(d.get("launch_to_live")) if d else "—",
                _sec(d.get("replay")) if d else "—",
                tcell,
            ]
        )
    text = [
        "A run that already has N completed steps is resumed on a standby worker. "
        "Stalwart: from placement (the claim's `Started` entry) to the first live step's "
        "`step.started`, and from the publish of the resume request; "
        f"{st.get(str(r['sizes'][0]), {}).get('placement_to_live', {}).get('n', 0)} "
        "resumes per size. DBOS: a fresh process's `DBOS.launch()` recovers the workflow "
        "(SIGKILLed in its gate step) until the gate step runs again, and the part of it "
        "spent replaying (from the recovered workflow body's first line). Temporal: "
        "`Replayer.replay_workflow` on the workflow's history (N sequential activities).",
        "",
        _table(
            [
                "completed steps",
                "Stalwart placement → live",
                "Stalwart resume publish → live",
                "DBOS launch → live",
                "DBOS replay part",
                "Temporal replay",
            ],
            rows,
        ),
        "",
    ]
    extra = [
        f"`{k}`: {_sec(v.get('replay'))} ({v.get('history')}, {v.get('events'):,} events)"
        for k, v in tmp.items()
        if "-" in k
    ]
    if tmp:
        text += [
            "Temporal histories of up to 1,000 activities were built on the dev server "
            "(~45 ms per sequential activity); the 10,000-activity history is synthetic: "
            "the real 100-activity history's six-event blocks repeated with renumbered "
            "ids (building it for real would take ~8 minutes). A synthetic 1,000-activity "
            "history replayed beside the real one checks the method: "
            + ("; ".join(extra) if extra else "not run")
            + ". A real workflow cannot reach 10,000 sequential activities at all: that is "
            "60,004 events, past Temporal's default limit of 51,200 events per history "
            "(it would need Continue-As-New).",
            "",
        ]
    per_step = _replay_cost(r)
    if per_step is not None:
        text += [
            f"Marginal cost of a replayed step (Stalwart, from the {r['sizes'][0]:,}- and "
            f"{r['sizes'][-1]:,}-step medians): {per_step * 1e6:.1f} µs.",
            "",
        ]
    big = st.get(str(r["sizes"][-1]), {}).get("profile")
    if big:
        text += _profile_tables(
            big,
            f"that resumed the {r['sizes'][-1]:,}-step run (one extra resume, sampled at 1 kHz)",
        )
    for key in ("dbos_error", "temporal_error"):
        if key in r:
            text += [f"{key.split('_')[0]} failed: `{r[key]}`", ""]
    if img:
        text += [f"![resume]({img})", ""]
    targets = []
    for n, limit in r["targets"].items():
        s = st.get(n, {}).get("placement_to_live")
        if s and s.get("n"):
            targets.append(
                [
                    f"resume {int(n):,} steps < {limit * 1000:.0f} ms",
                    _ms(s),
                    _ok(s["median"] < limit),
                ]
            )
    return "\n".join(text), targets


def _replay_cost(r: dict[str, Any]) -> float | None:
    st = r["stalwart"]
    lo, hi = r["sizes"][0], r["sizes"][-1]
    a = st.get(str(lo), {}).get("placement_to_live")
    b = st.get(str(hi), {}).get("placement_to_live")
    if not a or not b or hi == lo or not a.get("n") or not b.get("n"):
        return None
    return float((b["median"] - a["median"]) / (hi - lo))


def _throughput(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    rows: Table = []
    for w, c in r["configs"].items():
        cpu = c["cpu_us_per_step"]
        rows.append(
            [
                w,
                fmt(c["steps_per_s"], 1, 0),
                fmt(c["runs_per_s"], 1, 0),
                _cpu(cpu, "workers"),
                _cpu(cpu, "redis"),
                _cpu(cpu, "nats"),
                fmt(c["cpu_util_steps"], 100, 0, " %"),
                fmt(c["others_util"], 100, 0, " %"),
            ]
        )
    text = [
        f"Worker processes with `--concurrency {r.get('concurrency', '?')}` each, Redis with "
        "AOF everysec. Steps: a batch of runs of 40 trivial steps each submitted while the "
        "workers are SIGSTOPped, then released together; runs: a batch of single-step "
        "runs, the same way. Rates over the middle 80 % of the journal's own timestamps. "
        "CPU per step is user+system CPU from `/proc` over the batch divided by its "
        "steps; 'machine used' is all the benchmark's processes (workers, Redis, NATS, "
        "harness) against the machine's "
        f"{r.get('nproc', '?')} cores; 'others' is CPU used by processes outside the "
        "benchmark during the batches (this machine is shared).",
        "",
        _table(
            [
                "workers",
                "durable steps/s",
                "started runs/s",
                "worker CPU / step",
                "Redis CPU / step",
                "NATS CPU / step",
                "machine used",
                "others",
            ],
            rows,
        ),
        "",
    ]
    if img:
        text += [f"![throughput]({img})", ""]
    text += _bottleneck(r)
    return "\n".join(text), []


# Development history of the throughput and overhead figures: A/B runs on this machine,
# each "after" measured right after the change with the command given (not this run).
_ROUNDS = [
    (
        "starting point: the last full run before these rounds (no hiredis)",
        "446 µs (AOF everysec)",
        "4,728 / 7,353",
        "945 / 1,082",
    ),
    (
        "`hiredis` installed: redis-py parses replies in C",
        "358 µs",
        "— / 7,606 (A/B: was 6,571)",
        "—",
    ),
    (
        "journal appends down one auto-pipelined connection per worker "
        "(`checkpoints/_pipe.py`), the actor waiting on a future instead of a task; "
        "JetStream acks of events sampled, not one per event",
        "358 → 201 µs",
        "",
        "",
    ),
    (
        "events queued and sent in 2 ms batches; a first placement skips the journal read "
        "and the event lookup; finish does not wait for the SREM and the lease release",
        "201 → 68 µs (mean 99 µs)",
        "15,689 / 25,327",
        "1,951 / 2,696",
    ),
    (
        "`step.started` dropped when its step ends within the batch; no `asyncio.shield` "
        "per append",
        "—",
        "15,505 / 26,930",
        "1,931 / 2,743",
    ),
    (
        "`CLAIM`, its index update and `FINISH` go down the pipe too",
        "—",
        "18,314 / 27,415",
        "3,290 / 4,716",
    ),
]


def _rounds() -> list[str]:
    return [
        "### Bottlenecks removed, round by round",
        "",
        "Development A/B runs on this machine, not figures of this run: the serial step "
        "is the median step with AOF off from `bench/run --only overhead --no-peers "
        "--no-docs`, throughput the median of `bench/run --only throughput --no-docs` (1 / 4 "
        "workers). Each round removed what the profile above showed on top; the figure "
        "stopped moving when the worker's own Python per step (the step bookkeeping, the "
        "event objects and nats-py's per-message publish) became what is left, with the "
        "machine's two cores saturated.",
        "",
        _table(
            ["change", "serial step", "durable steps/s", "started runs/s"],
            [list(r) for r in _ROUNDS],
        ),
        "",
    ]


def _cpu(cpu: dict[str, Any], role: str) -> str:
    return fmt(cpu.get(role), 1, 0, " µs")


def _bottleneck(r: dict[str, Any]) -> list[str]:
    out = ["### What bounds it", ""]
    one = r["configs"].get("1")
    prof = (one or {}).get("profile") or {}
    last = list(r["configs"].values())[-1]
    cpu = last["cpu_us_per_step"]
    total = sum(cpu[k]["median"] for k in ("workers", "redis", "nats") if k in cpu)
    if total:
        cores = r.get("nproc") or 1
        ours = last["cpu_util_steps"]["median"]
        others = last["others_util"]["median"]
        verdict = (
            "The machine's CPU is saturated: the figure is bound by CPU"
            if ours + others >= 0.85
            else "The machine's CPU is not saturated: the bound is latency, not CPU"
        )
        out += [
            f"With {last['workers']} worker process(es) the benchmark's processes used "
            f"{ours * 100:.0f} % of the machine's {cores} cores during the steps batches "
            f"(others on this shared machine: {others * 100:.0f} %). One durable step costs "
            f"about {total:.0f} µs of CPU in total ({cpu['workers']['median']:.0f} µs in "
            f"the worker, {cpu['redis']['median']:.0f} µs in Redis, "
            f"{cpu['nats']['median']:.0f} µs in NATS), averaged over the whole batch, ramp-up "
            f"and tail included: at that cost {cores} cores do about "
            f"{cores * 1e6 / total:,.0f} steps/s. (The rates above are over the middle 80 % "
            "of a batch, where every run is busy and a write to Redis or NATS carries the "
            f"most steps, so they can come out higher.) {verdict}; "
            f"{cpu['workers']['median'] / total * 100:.0f} % of that CPU is the worker's "
            "Python.",
            "",
        ]
        run_cpu = last["cpu_ms_per_run"]
        run_total = sum(run_cpu[k]["median"] for k in ("workers", "redis", "nats") if k in run_cpu)
        if run_total:
            out += [
                f"A single-step run costs about {run_total:.2f} ms of CPU from request to "
                f"finish ({run_cpu['workers']['median']:.2f} ms worker, "
                f"{run_cpu['redis']['median']:.2f} ms Redis, "
                f"{run_cpu['nats']['median']:.2f} ms NATS): at most about "
                f"{cores * 1e3 / run_total:,.0f} runs/s on {cores} cores.",
                "",
            ]
    for name in ("steps", "runs"):
        out += _profile_tables(prof.get(name) or {}, f"during a {name} batch (1 worker)")
    out += _rounds()
    probe = r.get("pool_probe")
    if probe:
        clean = not (probe["place_crashed"] or probe.get("abandoned", 0))
        out += [
            f"High concurrency: one worker with `--concurrency {probe['concurrency']}` and a "
            f"supervisor, {probe.get('batches', 1)} batch(es) of {probe['runs']} runs of "
            f"{probe['steps_per_run']} steps; the slowest batch took {probe['wall']:.1f} s. "
            "Journal appends share the worker's one pipelined Redis connection and other "
            "Redis calls wait for a connection of a bounded blocking pool, so a burst queues "
            "instead of failing: the worker logged "
            f"{probe['place_crashed']} `place.crashed` and {probe.get('abandoned', 0)} "
            "`run.abandoned`, and every run of a batch ended within that batch's time"
            + (
                "."
                if clean
                else " (a failed placement is nak'ed and retried after a second; see the "
                "worker log)."
            ),
            "",
        ]
    return out


def _journal(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    rows: Table = []
    calls = sorted(r["calls"], key=int)
    for k in calls:
        c = r["calls"][k]
        rows.append(
            [
                k,
                _kb(c["content"]),
                _kb(c["stalwart_entries"]),
                _kb(c["stalwart_memory"]),
                _kb(c["inputs_entries"]),
                _kb(c["inputs_memory"]),
                f"{c['inputs_memory'] / max(c['stalwart_memory'], 1):.1f}\u00d7",
                _kb(c["temporal_history"]) if "temporal_history" in c else "—",
            ]
        )
    slope_s = _slope([int(k) for k in calls], [r["calls"][k]["stalwart_memory"] for k in calls])
    slope_i = _slope([int(k) for k in calls], [r["calls"][k]["inputs_memory"] for k in calls])
    text = [
        f"An agent loop whose conversation starts with a {r['prompt_bytes']}-byte prompt and "
        f"grows by {r['message_bytes']} bytes per model call. Stalwart journals each model "
        "call's response; 'store the inputs' keeps, per call, the full input conversation "
        "and the response (what a design that records step inputs stores), in the same "
        "Redis. Sizes are the msgpack bytes written and Redis's `MEMORY USAGE` of the "
        "stream.",
        "",
        _table(
            [
                "model calls",
                "new content",
                "Stalwart journal (bytes written)",
                "Stalwart journal (Redis memory)",
                "store the inputs (bytes written)",
                "store the inputs (Redis memory)",
                "inputs ÷ Stalwart",
                "Temporal history",
            ],
            rows,
        ),
        "",
        f"Growth exponent (log-log slope over {calls[0]}\u2013{calls[-1]} calls): Stalwart "
        f"{slope_s:.2f} (linear), store-the-inputs {slope_i:.2f} (quadratic).",
        "",
    ]
    if img:
        text += [f"![journal size]({img})", ""]
    targets = [
        [
            "journal grows linearly, store-the-inputs quadratically",
            f"slopes {slope_s:.2f} vs {slope_i:.2f}",
            _ok(slope_s < 1.2 and slope_i > 1.5),
        ]
    ]
    return "\n".join(text), targets


def _slope(xs: list[int], ys: list[float]) -> float:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    num = sum((x - mx) * (y - my) for x, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return num / den if den else math.nan


def _memory(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    mib = 1024 * 1024
    rows = [
        [
            f"{r['runs']:,} active runs (each in flight in one step)",
            fmt(r["idle_rss"], 1 / mib, 1, " MiB"),
            fmt(r["active_rss"], 1 / mib, 1, " MiB"),
            fmt(r["per_run"], 1 / 1024, 1, " KiB"),
            fmt(r["cpu_idle_hosting"], 100, 1, " % of a core"),
        ]
    ]
    pas = r.get("passivated")
    text = [
        "RSS of one worker process (`VmRSS`), warmed up with 20 short runs. Active runs: "
        "each is in flight in one step; 'CPU while hosting' is the worker's CPU while it "
        "does nothing but keep those runs' leases alive (renewals every TTL/3, TTL 5 s).",
        "",
    ]
    if isinstance(pas, dict) and "error" not in pas:
        rows.append(
            [
                f"{pas['runs']:,} passivated runs (one step, then `ctx.wait_for_signal`)",
                f"{pas['idle'] / mib:.1f} MiB",
                f"{pas['after'] / mib:.1f} MiB",
                f"{pas['per_run']:.0f} B in the worker, {pas['redis_per_run'] / 1024:.1f} KiB "
                "in Redis",
                "—",
            ]
        )
        text += [
            "Passivated runs: the worker runs with `STALWART_PASSIVATE_AFTER=0.05` and "
            "`--concurrency 64`; each run takes one step, starts a durable wait for a signal "
            "that never comes, and gives up its slot and lease (record `waiting`). 'RSS' is "
            f"the worker's after all {pas['runs']:,} passed through it "
            f"({pas['passivated_per_s']:,.0f} runs/s placed, stepped and passivated); Redis "
            "memory per run is `used_memory` growth divided by the runs (record, journal, "
            "index entries). One measurement (n=1).",
            "",
        ]
    elif isinstance(pas, dict):
        rows.append([f"{pas['runs']:,} passivated runs", "—", "—", "—", "failed"])
        text += [f"Passivation measurement failed: `{pas['error']}`", ""]
    else:
        rows.append(["10,000 passivated runs", "—", "—", "—", "not built yet"])
    text[2:2] = [
        _table(["worker hosting", "idle RSS", "RSS", "per run", "CPU while hosting"], rows),
        "",
    ]
    return "\n".join(text), []


def _redis_cluster(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    del img
    rows: Table = []
    for name, label in (
        ("single", "single Redis"),
        ("cluster", "Redis Cluster, 3 masters + 3 replicas"),
    ):
        c = r[name]
        cpu = c["cpu_us_per_step"]
        rows.append(
            [
                label,
                fmt(c["steps_per_s"], 1, 0),
                _cpu(cpu, "workers"),
                _cpu(cpu, "redis"),
                _cpu(cpu, "nats"),
                fmt(c["cpu_util"], 100, 0, " %"),
                fmt(c["others_util"], 100, 0, " %"),
            ]
        )
    b = r["batch"]
    text = [
        f"{r['workers']} worker processes with `--concurrency {r['concurrency']}` per target, "
        f"batches of {b['runs']} runs of {b['steps_per_run']} trivial steps, run as in 4 "
        "(workers SIGSTOPped while the batch is submitted, rates over the middle 80 % of the "
        "journal's timestamps). Both targets are up at once and their batches alternate; "
        "every Redis node has AOF everysec. Redis CPU on the cluster is the sum over its "
        "six nodes, replicas included. The shared indexes are split into 16 shards on the "
        "cluster (`redis_index_shards` 0, automatic) and are one key each on the single Redis.",
        "",
        _table(
            [
                "target",
                "durable steps/s",
                "worker CPU / step",
                "Redis CPU / step",
                "NATS CPU / step",
                "machine used",
                "others",
            ],
            rows,
        ),
        "",
        f"Cluster / single steps/s, paired by repetition: {fmt(r['ratio'], 1, 2)}.",
        "",
    ]
    return "\n".join(text), []


def _flow(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    del img
    rows: Table = [
        ["no rule governs it", _us(r["free"]), "-"],
        ["under a request limit", _us(r["limited"]), _us(r["acquire"])],
        ["under a token limit", _us(r["tokens"]), _us(r["acquire_tokens"])],
    ]
    text = [
        f"One run of {r['steps_per_round']} rounds of three trivial steps in a worker with "
        "`--concurrency 1` against Redis with AOF everysec: a step no flow rule governs, one "
        "under a `RateLimit` on requests and one under a `RateLimit` on tokens (limits so high "
        "that nothing waits), interleaved and timed inside the agent. The added cost is the "
        "acquire and settle scripts (two Redis round trips), paired by repetition.",
        "",
        _table(["step", "median per step", "added by the limit"], rows),
        "",
        f"A step that no rule governs, in an app that has rules, costs one dictionary lookup: "
        f"{r['lookup'] * 1e9:.0f} ns (in-process). An app without rules has no gate at all.",
        "",
    ]
    targets = [["flow: acquire + settle per limited step", _us(r["acquire"]), ""]]
    return "\n".join(text), targets


def _flow_breakers(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    del img
    rows: Table = [
        ["no rule governs it", _us(r["free"]), "-"],
        ["under a shared breaker (closed)", _us(r["breaker"]), _us(r["breaker_added"])],
        ["under a retry budget (first attempt)", _us(r["budget"]), _us(r["budget_added"])],
        ["fails once, then a retry: no rule", _us(r["retry_free"]), "-"],
        ["fails once, then a retry: retry budget", _us(r["retry_budget"]), _us(r["retry_added"])],
    ]
    text = [
        f"One run of {r['steps_per_round']} rounds of five trivial steps in a worker with "
        "`--concurrency 1` against Redis with AOF everysec, interleaved and timed inside the "
        "agent: a step no flow rule governs, one under a `SharedBreaker` that never opens, one "
        "under a `RetryBudget` that never runs dry, and a step that fails once and is retried "
        "at once, without and with the budget. The added cost is paired by repetition.",
        "",
        _table(["step", "median per step", "added by the rule"], rows),
        "",
    ]
    targets = [["flow: shared breaker check per step", _us(r["breaker_added"]), ""]]
    return "\n".join(text), targets


def _flow_concurrency(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    del img
    rows: Table = [
        ["no limit", _ms(r["free_placement"], 2), _ms(r["free_run"], 2)],
        ["a limit that never parks", _ms(r["limited_placement"], 2), _ms(r["limited_run"], 2)],
    ]
    text = [
        f"A worker process (`--concurrency 16`) runs the same trivial agent with and without a "
        f"`ConcurrencyLimit`, {r['runs']} runs per round one at a time (no queueing), rounds "
        "interleaved. Placement: the record's creation to the claim's `Started` entry; run: "
        "submit to `Finished`.",
        "",
        _table(["agent", "placement", "run"], rows),
        "",
        f"The scripts alone: acquire of a free slot {_us(r['acquire'])}, release "
        f"{_us(r['release'])}. Under a limit of 4 with a burst of {r['runs']} runs, a slot's "
        f"release to the next run's claim (hand-on) took {_ms(r['hand_on'], 2)}.",
        "",
    ]
    targets = [["flow: concurrency acquire of a free slot", _us(r["acquire"]), ""]]
    return "\n".join(text), targets


def _streaming(r: dict[str, Any], img: str | None) -> tuple[str, list[list[str]]]:
    del img

    def p(s: dict[str, Any] | None) -> str:
        if not s or not s.get("n"):
            return "n/a"
        return f"{s['median'] * 1e3:.2f} ms / {s['p99'] * 1e3:.2f} ms"

    rows: Table = [
        [name, p(r[f"{k}_first"]), p(r[f"{k}_later"]), p(r[f"{k}_gap"])]
        for k, name in (
            ("direct", "direct (in-process `async for`)"),
            ("stalwart", "through Stalwart"),
        )
    ]
    text = [
        f"A simulated model yields {r['chunks']} chunks {r['interval'] * 1e3:.0f} ms apart "
        f"after {r['think']:.1f} s of 'thinking', each stamped with `time.time()` when "
        "yielded; the consumer stamps it when it arrives (one machine, one clock). Direct: "
        "an `async for` over the generator in the same process, the framework-free "
        "baseline. Through Stalwart: a worker process runs the model in a step and "
        'publishes each chunk with `ctx.emit("model.delta", ...)`; the client reads '
        f"`handle.stream()` (resets applied). {r['runs']} runs of each, interleaved. "
        "Figures are p50 / p99.",
        "",
        _table(["consumer", "first chunk", "later chunks", "gap between chunks"], rows),
        "",
        "The events publisher batches what a run publishes for up to 2 ms (one socket "
        "write per batch), which is part of the figure through Stalwart.",
        "",
    ]
    targets = [["streaming: first chunk, model to client (p50)", p(r["stalwart_first"]), ""]]
    return "\n".join(text), targets


SECTIONS = [
    ("overhead", "1. Step overhead", _overhead),
    ("failover", "2. Failover after SIGKILL", _failover),
    ("resume", "3. Resume cost vs history", _resume),
    ("throughput", "4. Throughput", _throughput),
    ("journal_size", "5. Journal size", _journal),
    ("memory", "6. Memory", _memory),
    ("redis_cluster", "7. Redis Cluster vs a single Redis", _redis_cluster),
    ("flow", "8. Flow control: the cost of a shared limit", _flow),
    (
        "flow_breakers",
        "9. Flow control: the cost of shared breakers and retry budgets",
        _flow_breakers,
    ),
    ("flow_concurrency", "10. Flow control: the cost of a concurrency limit", _flow_concurrency),
    ("streaming", "11. Streaming latency: a model's chunk to the client", _streaming),
]


def _header(meta: dict[str, Any]) -> list[str]:
    m, v = meta["machine"], meta["versions"]
    vrows = [[k, f"`{val}`"] for k, val in v.items()]
    peers = meta.get("peer_errors") or {}
    load0 = ", ".join(f"{x:.2f}" for x in m.get("loadavg_start", []))
    load1 = ", ".join(f"{x:.2f}" for x in m.get("loadavg_end", []))
    out = [
        "Produced by the command below on the machine described here; every figure is "
        "the median [min\u2013max] over the repetitions of this one run, and every ratio "
        "compares figures measured in the same run (paired by repetition where they are "
        "interleaved). The machine is small and shared: absolute numbers move from run to "
        "run, ratios much less.",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Run started {meta['started']}, took {meta.get('seconds', 0) / 60:.1f} minutes. "
        "`bench/run --quick` is the CI smoke test (a few seconds per measurement, no peers, "
        "no timing assertions); raw results of every run are saved as JSON under "
        "`bench/results/` and `python -m bench --report FILE` re-renders them.",
        "",
        "## Machine and versions",
        "",
        _table(
            ["machine", ""],
            [
                ["CPU", f"{m['cpu']} ({m['nproc']} cores)"],
                ["memory", m["memory"]],
                ["kernel", m["kernel"]],
                ["load average (1, 5, 15 min) at start / end", f"{load0} / {load1}"],
            ],
        ),
        "",
        _table(["component", "version"], vrows),
        "",
    ]
    if peers:
        out += ["Peers not measured in this run:", ""]
        out += [f"- {k}: {val}" for k, val in peers.items()]
        out += [""]
    return out


def render(results: dict[str, Any], img_dir: Path | None, img_prefix: str) -> str:
    meta = results["meta"]
    images = plots.draw(results, img_dir) if img_dir is not None else {}
    body: list[str] = []
    targets: list[list[str]] = []
    for key, title, fn in SECTIONS:
        body += [f"## {title}", ""]
        err = _err(results.get(key))
        if err:
            body += [err, ""]
            continue
        img = images.get(key)
        text, t = fn(results[key], f"{img_prefix}{img}" if img else None)
        body += [text, ""]
        targets += t
    if img_dir is not None and not images:
        body += ["(No plots: matplotlib is not installed.)", ""]
    mode = "quick smoke test" if meta["quick"] else "full run"
    out = [f"# Benchmarks ({mode})", ""]
    out += _header(meta)
    out += ["## Targets", "", _table(["target (issue #6)", "measured", ""], targets), ""]
    out += body
    return "\n".join(out).rstrip() + "\n"


def write(results: dict[str, Any], docs: bool) -> Path:
    """Write the report; ``docs``: into docs/ (full mode), else under bench/results/."""
    root = Path(ROOT)
    if docs:
        md, img_dir, prefix = root / "docs" / "benchmarks.md", root / "docs" / "img", "img/"
    else:
        base = root / "bench" / "results"
        md, img_dir, prefix = base / "report.md", base / "img", "img/"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(render(results, img_dir, prefix))
    return md


def summary_text(results: dict[str, Any]) -> str:
    """The report's text without images, for the terminal and CI logs."""
    return render(results, None, "")
