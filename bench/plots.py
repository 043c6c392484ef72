"""PNG plots of the curves (matplotlib, Agg backend); nothing is drawn without matplotlib."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

PREFIX = "bench-"
COLORS = {"stalwart": "#1f6feb", "dbos": "#d1242f", "temporal": "#8250df", "floor": "#57606a"}


def _err(s: dict[str, Any], scale: float = 1.0) -> tuple[float, list[float]]:
    med = s["median"] * scale
    return med, [med - s["min"] * scale, s["max"] * scale - med]


def _overhead(plt: Any, r: dict[str, Any], path: Path) -> None:
    names, vals, errs, colors = [], [], [], []
    for name, d in r["systems"].items():
        kind = name.split("/")[0]
        label = name.replace("floor_store", "pipe append alone").replace("floor_", "floor ")
        names.append(label.replace("/", " · AOF ").replace("_", " "))
        med, e = _err(d["overhead"], 1e6)
        vals.append(max(med, 0.1))
        errs.append(e)
        colors.append(
            COLORS["stalwart"]
            if kind == "stalwart"
            else COLORS["dbos"]
            if kind == "dbos"
            else COLORS["temporal"]
            if kind.startswith("temporal")
            else COLORS["floor"]
        )
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.2))
    ys = range(len(names))
    ax.barh(list(ys), vals, xerr=list(zip(*errs, strict=True)), color=colors, capsize=2)
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(
        "overhead per step: mean step minus a plain call, µs\n"
        "(log scale; median of rounds, bars min\u2013max)"
    )
    ax.set_title(f"Step overhead, N = {r['n']} trivial steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _failover(plt: Any, r: dict[str, Any], path: Path) -> None:
    from bench.report import failover_cases

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, d in enumerate(failover_cases(r)):
        vals = sorted(d["raw"]["to_step_completed"])
        ys = [(k + 1) / len(vals) for k in range(len(vals))]
        color = ["#1f6feb", "#bf8700", "#1a7f37"][i % 3]
        how = (
            f"probes every {d['liveness_interval']:g} s"
            if d["liveness_interval"] > 0
            else "lease expiry"
        )
        ax.step(vals, ys, where="post", label=f"TTL {d['ttl']} s, {how}", color=color)
        ax.axvline(d["target_p50"], color=color, ls=":", lw=1)
        if d.get("target_p99"):
            ax.axvline(d["target_p99"], color=color, ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("seconds from SIGKILL to the first step completed on another worker (log)")
    ax.set_ylabel("fraction of kills")
    ax.set_title("Failover (dotted: p50 target; dashed: p99 target without probes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _resume(plt: Any, r: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))

    def line(data: dict[str, Any], key: str, label: str, color: str, ls: str = "-") -> None:
        xs, ys, lo, hi = [], [], [], []
        for n in r["sizes"]:
            s = data.get(str(n), {}).get(key)
            if s and s.get("n"):
                xs.append(n)
                med, (el, eh) = _err(s)
                ys.append(med)
                lo.append(el)
                hi.append(eh)
        if xs:
            ax.errorbar(
                xs, ys, yerr=[lo, hi], label=label, color=color, ls=ls, marker="o", capsize=3
            )

    line(
        r["stalwart"],
        "placement_to_live",
        "Stalwart: placement → first live step",
        COLORS["stalwart"],
    )
    line(r.get("dbos", {}), "launch_to_live", "DBOS: launch → first live step", COLORS["dbos"])
    line(r.get("dbos", {}), "replay", "DBOS: replay part", COLORS["dbos"], "--")
    line(r.get("temporal", {}), "replay", "Temporal: Replayer", COLORS["temporal"])
    for n, limit in r["targets"].items():
        ax.plot([int(n)], [limit], marker="_", ms=18, color="black")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("completed steps in the history")
    ax.set_ylabel("seconds (log)")
    ax.set_title("Resume cost vs history (black ticks: targets)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _throughput(plt: Any, r: dict[str, Any], path: Path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    ws = [int(w) for w in r["configs"]]
    for ax, key, title in (
        (a1, "steps_per_s", "durable steps/s"),
        (a2, "runs_per_s", "started runs/s"),
    ):
        meds, errs = zip(*(_err(r["configs"][str(w)][key]) for w in ws), strict=True)
        ax.errorbar(
            ws,
            meds,
            yerr=list(zip(*errs, strict=True)),
            marker="o",
            capsize=3,
            color=COLORS["stalwart"],
        )
        ax.set_xticks(ws)
        ax.set_xlabel("worker processes")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"Throughput on {r.get('nproc', '?')} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _journal(plt: Any, r: dict[str, Any], path: Path) -> None:
    calls = sorted(int(k) for k in r["calls"])
    mib = 1024 * 1024
    fig, ax = plt.subplots(figsize=(7, 4))

    def series(key: str) -> list[float]:
        return [r["calls"][str(c)].get(key, float("nan")) / mib for c in calls]

    ax.plot(
        calls,
        series("stalwart_memory"),
        "o-",
        color=COLORS["stalwart"],
        label="Stalwart journal (linear)",
    )
    ax.plot(
        calls,
        series("inputs_memory"),
        "o-",
        color=COLORS["floor"],
        label="store the inputs (quadratic)",
    )
    if all("temporal_history" in r["calls"][str(c)] for c in calls):
        ax.plot(
            calls,
            series("temporal_history"),
            "s--",
            color=COLORS["temporal"],
            label="Temporal history (activity inputs)",
        )
    ax.set_xlabel("model calls (each adds ~2 KB to the conversation)")
    ax.set_ylabel("MiB stored for the run")
    ax.set_title("Journal size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


_PLOTS = {
    "overhead": _overhead,
    "failover": _failover,
    "resume": _resume,
    "throughput": _throughput,
    "journal_size": _journal,
}


def draw(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Draw every plot whose section has results; returns section -> file name."""
    if importlib.util.find_spec("matplotlib") is None:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    for key, fn in _PLOTS.items():
        section = results.get(key)
        if not section or "error" in section:
            continue
        name = f"{PREFIX}{key.replace('_', '-')}.png"
        fn(plt, section, out_dir / name)
        plt.close("all")
        done[key] = name
    draw_extra(results, out_dir, done)
    return done


def _side_by_side(plt: Any, r: dict[str, Any], path: Path) -> None:
    """Steps/s per system (log scale) and submit -> first step latency, side by side."""
    from bench.report_growth import SBS_LABELS

    sy = r["systems"]
    names = list(sy)
    colors = [COLORS.get(n.split("_")[0], COLORS["floor"]) for n in names]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.8))
    meds, errs = zip(*(_err(sy[n]["steps_per_s"]) for n in names), strict=True)
    ys = list(range(len(names)))
    a1.barh(ys, meds, xerr=list(zip(*errs, strict=True)), color=colors, capsize=2)
    a1.set_yticks(ys, [SBS_LABELS.get(n, n) for n in names], fontsize=8)
    a1.invert_yaxis()
    a1.set_xscale("log")
    a1.set_xlabel("durable steps/s, 64 concurrent runs (log scale)")
    for y, n, m in zip(ys, names, meds, strict=True):
        ratio = r["ratios"].get(f"{n}/floor")
        if ratio and ratio.get("n"):
            a1.text(m, y, f" {ratio['median']:.3f}x floor", va="center", fontsize=7)
    rate = str(int(r["params"]["latency"]["rates"][0]))
    lat = r["latency"].get(rate, {})
    ln = [n for n in names if n in lat and "p50" in lat[n]]
    x = list(range(len(ln)))
    p50 = [lat[n]["p50"] * 1e3 for n in ln]
    p99 = [lat[n]["p99"] * 1e3 for n in ln]
    a2.bar(
        [i - 0.2 for i in x], p50, 0.4, label="p50", color=[COLORS.get(n.split("_")[0]) for n in ln]
    )
    a2.bar([i + 0.2 for i in x], p99, 0.4, label="p99", color="#bbbbbb")
    a2.set_xticks(
        x,
        [
            SBS_LABELS.get(n, n).split(",")[0] + ("\n(local)" if n.endswith("local") else "")
            for n in ln
        ],
        fontsize=8,
    )
    a2.set_yscale("log")
    a2.set_ylabel("ms (log scale)")
    a2.set_title(f"submit → first step started at {rate} runs/s", fontsize=9)
    a2.legend(fontsize=8)
    fig.suptitle("Throughput side by side, same run, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _growth(plt: Any, r: dict[str, Any], path: Path) -> None:
    """Three files: bench-growth-inflight.png (``path``), -journal.png and -agents.png; a
    curve that failed in the run is not drawn."""
    if "error" not in r["inflight"]:
        _growth_inflight(plt, r["inflight"], path)
    if "error" not in r["journal"]:
        _growth_journal(plt, r["journal"], path)
    if "error" not in r["agents"]:
        _growth_agents(plt, r["agents"], path)


def _growth_inflight(plt: Any, inf: dict[str, Any], path: Path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, style, label in (("active", "o-", "active runs"),
                              ("passivated", "s--", "passivated runs + fixed active load")):  # fmt: skip
        xs = [c for c in inf["sizes"] if "steps_per_s" in inf[key].get(str(c), {})]
        a1.plot(xs, [inf[key][str(c)]["steps_per_s"] for c in xs], style, label=label,
                color=COLORS["stalwart"])  # fmt: skip
        a2.plot(xs, [inf[key][str(c)]["cpu_us_per_step"] for c in xs], style, label=label,
                color=COLORS["stalwart"])  # fmt: skip
    for ax, title in ((a1, "durable steps/s"), (a2, "worker CPU per step, µs")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(inf["sizes"], [str(c) for c in inf["sizes"]])
        ax.set_xlabel("runs per worker")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle("Growth: runs in flight (1 worker)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close("all")


def _growth_journal(plt: Any, jr: dict[str, Any], path: Path) -> None:
    ls = jr["lengths"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(ls, [jr["points"][str(n)]["resume"]["median"] * 1e3 for n in ls], "o-",
            color=COLORS["stalwart"])  # fmt: skip
    a1.set_title("resume: signal → first new step, ms")
    a2.plot(ls, [jr["points"][str(n)]["step_gap_us"] for n in ls], "o-",
            color=COLORS["stalwart"], label="time between new steps")  # fmt: skip
    a2.plot(ls, [jr["points"][str(n)]["cpu_us_per_step"] for n in ls], "s--",
            color=COLORS["floor"], label="worker CPU per new step (resume included)")  # fmt: skip
    a2.set_title("a new step, µs")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("steps in the journal")
        ax.set_ylim(bottom=0)
    fig.suptitle("Growth: journal length")
    fig.tight_layout()
    fig.savefig(str(path).replace("inflight", "journal"), dpi=110)
    plt.close("all")


def _growth_agents(plt: Any, ag: dict[str, Any], path: Path) -> None:
    cs = ag["counts"]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.6))
    a1.plot(cs, [ag["points"][str(a)]["steps_per_s"] for a in cs], "o-", color=COLORS["stalwart"])
    a1.set_title("durable steps/s")
    a2.plot(cs, [ag["points"][str(a)]["cpu_us_per_step"] for a in cs], "o-",
            color=COLORS["stalwart"])  # fmt: skip
    a2.set_title("worker CPU per step, µs")
    a3.plot(cs, [ag["points"][str(a)]["idle_msgs_per_s"] for a in cs], "o-", color=COLORS["floor"])
    a3.set_title("idle NATS messages/s")
    for ax in (a1, a2, a3):
        ax.set_xlabel(f"agents on {ag['workers']} workers")
        ax.set_ylim(bottom=0)
    fig.suptitle("Growth: agents")
    fig.tight_layout()
    fig.savefig(str(path).replace("inflight", "agents"), dpi=110)


_EXTRA = {"growth": ("bench-growth-inflight.png", _growth)}
"""Sections whose plot function writes its own file names (several files)."""


def draw_extra(results: dict[str, Any], out_dir: Path, done: dict[str, str]) -> None:
    """The side-by-side plot of section 4 and the growth curves, beside :func:`draw`'s."""
    tp = results.get("throughput") or {}
    sbs = tp.get("side_by_side")
    if sbs and "error" not in sbs and "throughput" in done:
        import matplotlib.pyplot as plt

        _side_by_side(plt, sbs, out_dir / done["throughput"].replace(".png", "-peers.png"))
        plt.close("all")
    for key, (name, fn) in _EXTRA.items():
        section = results.get(key)
        if section and "error" not in section:
            import matplotlib.pyplot as plt

            fn(plt, section, out_dir / name)
            plt.close("all")
            done[key] = name
