"""What a soak run (soak.py) measured: numbers against thresholds, a summary, and plots.

analyse() turns the raw run (per-second rows, every command's rmw reception and source timestamps, every chunk's
reception time and stamp, log scans, exit codes) into report.json; plot() draws RSS over time, the latency histograms,
the command period histogram and a timeline; summary() is the text the tool prints. Pure functions of the raw run,
unit-tested on synthetic data (test/test_soak.py).

The command period is measured on arrival (the rmw reception timestamp of each ~/joint_command, what a robot driver
sees) and, to tell the node's timing from the transport's, on the source timestamps (when the node published).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

STAGES = ("preprocess", "vision", "prefix_cache", "denoise", "postprocess", "total", "latency")
# Pass/fail thresholds. full: the 10-minute soak on an idle machine (the numbers). short: the CI mode, ~60 s on
# a shared 2-core runner: RSS from 20 s to the end (the allocator is still warming up in the first minute), and a
# command period error / gap bound that a busy runner keeps.
THRESHOLDS = {
    "full": {"rss_from_s": 120.0, "rss_growth_pct": 5.0, "max_gap_periods": 2.0, "p99_period_error_ms": 2.0,
             "mean_period_excess_pct": 2.0, "recover_s": 5.0, "settle_s": 10.0, "judge_contended": True},
    # CI: the stream never stops (no gap reaches max_observation_age_s, 25 periods at 50 Hz) and keeps its rate; the
    # p99 error is reported only (a shared runner's scheduling, not the node, sets it: measured on this 2-core machine
    # with other jobs running, a bare 50 Hz rclpy timer in an idle process had a p99 error of 11-39 ms). The seconds in
    # which other processes left the soak less than LEFT_PCT of a core are not judged (contended_windows): there the
    # node's inferences ran late, each chunk ran out before the next came, and the commands rightly stopped at its end
    # (a CI run beside a second test suite once left it a quarter of a core: the tiny model's inference took 5x its
    # time, 4 s without commands).
    "short": {"rss_from_s": 20.0, "rss_growth_pct": 10.0, "max_gap_periods": 25.0, "p99_period_error_ms": None,
              "mean_period_excess_pct": 5.0, "recover_s": 5.0, "settle_s": 5.0, "judge_contended": False},
}
LEFT_PCT = 75.0  # CPU (100 = one core) that a contended second left the soak's processes less of; at the short soak's
# load the node alone takes 55-97 % of a core, and beside one busy core (100 % taken, 100 % left) it kept its commands
CONTENDED_LAG_S = 1.0  # a contended second's effect on the commands: the inference it slowed ends after it
RSS_WINDOW_S = 10.0  # RSS at a time = the median of the samples in the RSS_WINDOW_S after it


def percentiles(values: Sequence[float], ps=(50, 99)) -> Dict[str, Optional[float]]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    out: Dict[str, Optional[float]] = {f"p{p}": (float(np.percentile(v, p)) if v.size else None) for p in ps}
    out["max"] = float(v.max()) if v.size else None
    out["n"] = int(v.size)
    return out


def command_timing(times_ns: Sequence[int], period_s: float, start_ns: int, end_ns: int, start_wall_ns: int,
                   excluded: Sequence[tuple] = ()) -> dict:
    """Intervals between consecutive commands in [start_ns, end_ns]: their error against ``period_s`` (ms; p50, p99,
    max of the absolute error) and the gaps over 1, 2 and 5 periods (time since the run's start and length). An
    interval that overlaps an ``excluded`` (start_ns, end_ns) window (an injected fault, a contended second) counts
    for neither; where every one does, "all_excluded" says so."""
    t = np.sort(np.asarray([x for x in times_ns if start_ns <= x <= end_ns], dtype=np.int64))
    keep = np.ones(max(t.size - 1, 0), dtype=bool)
    for a, b in excluded:
        keep &= ~((t[1:] >= a) & (t[:-1] <= b))
    if not keep.any():
        untimed = {"n": int(t.size), "error_ms": percentiles([]), "gaps": {}, "worst_gaps": [], "mean_period_ms": None}
        return dict(untimed, all_excluded=True) if keep.size else untimed
    intervals = np.diff(t)[keep] * 1e-9
    starts = t[:-1][keep]
    error_ms = np.abs(intervals - period_s) * 1e3
    order = np.argsort(intervals)[::-1][:10]
    return {
        "n": int(t.size),
        "mean_period_ms": float(intervals.mean() * 1e3),
        "error_ms": percentiles(error_ms),
        "within_2ms_pct": float(100.0 * np.mean(error_ms <= 2.0)),
        "gaps": {f"over_{k}_periods": int(np.sum(intervals > k * period_s)) for k in (1.5, 2, 5)},
        "max_gap_periods": float(intervals.max() / period_s),
        "worst_gaps": [{"at_s": round((int(starts[i]) - start_wall_ns) * 1e-9, 3),
                        "ms": round(float(intervals[i]) * 1e3, 2)} for i in order],
    }


def fault_outcomes(source_ns: Sequence[int], windows: Sequence[Sequence[int]], end_ns: int, start_wall_ns: int,
                   notice_s: float = 1.0) -> List[dict]:
    """Per injected fault window [start, end] (end 0: still on at the end of the run): whether the commands stopped
    (none published from ``notice_s`` after the start, the time the node needs to run into the failure, to the end),
    when the last one before and the first one after were published. The exclusion window for the command timing is
    [start, first command after the end]."""
    t = np.sort(np.asarray(source_ns, dtype=np.int64))
    out = []
    for start, stop in windows:
        stop = stop or end_ns
        before, after = t[t < start], t[t >= stop]
        during = t[(t >= start + int(notice_s * 1e9)) & (t < stop)]
        last = t[(t >= start) & (t < stop)]
        first_after = int(after[0]) if after.size else None
        out.append({"at_s": round((start - start_wall_ns) * 1e-9, 1), "lasted_s": round((stop - start) * 1e-9, 2),
                    "stopped": bool(during.size == 0),
                    "last_command_after_s": round((int(last[-1]) - start) * 1e-9, 3) if last.size else
                    (round((int(before[-1]) - start) * 1e-9, 3) if before.size else None),
                    "recovered_after_s": round((first_after - stop) * 1e-9, 3) if first_after else None,
                    "exclude_ns": [int(start), first_after or int(end_ns)]})
    return out


def mark_contended_recoveries(faults: List[dict], windows: Sequence[Sequence[int]], held: List[tuple], end_ns: int,
                              recover_s: float) -> None:
    """Sets each fault's (fault_outcomes, of ``windows``) ``recovery_contended``: whether a contended window
    (``held``) overlaps the ``recover_s`` after its end. The commands come back with the first chunk that still has
    an action for now, which a starved inference may not give for a while."""
    for f, (_, stop) in zip(faults, windows):
        stop = stop or end_ns
        f["recovery_contended"] = any(a < stop + recover_s * 1e9 and b > stop for a, b in held)


def others_bound_pct(cores: int) -> float:
    """Other processes' CPU (100 = one core) from which a second counts as contended: all but LEFT_PCT."""
    return 100.0 * cores - LEFT_PCT


def contended_rows(rows: List[dict], cores: int) -> List[dict]:
    """The per-second rows in which the machine's other processes (its busy CPU, steal time included, less the
    node's, fake_robot's and this monitor's) left the soak's processes less than LEFT_PCT of a core."""
    out = []
    for r in rows:
        ours = [r.get(k) for k in ("node_cpu_pct", "robot_cpu_pct", "monitor_cpu_pct")]
        if r.get("machine_cpu_pct") is not None and all(v is not None for v in ours) and \
                r["machine_cpu_pct"] - sum(ours) >= others_bound_pct(cores):
            out.append(r)
    return out


def contended_windows(contended: List[dict], start_wall_ns: int, lag_s: float = CONTENDED_LAG_S) -> List[tuple]:
    """The spans of ``contended`` (contended_rows) as merged (start_ns, end_ns) windows, each extended by ``lag_s``."""
    windows: List[list] = []
    for r in contended:
        start = start_wall_ns + int((r["t"] - r.get("dt", 1.0)) * 1e9)
        end = start_wall_ns + int((r["t"] + lag_s) * 1e9)
        if windows and start <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], end)
        else:
            windows.append([start, end])
    return [tuple(w) for w in windows]


def rss_growth(rows: List[dict], key: str, from_s: float, window_s: float = RSS_WINDOW_S) -> dict:
    """RSS at ``from_s`` (median of the samples in the window after it) and at the end (median of the last window):
    growth in percent."""
    t = np.array([r["t"] for r in rows], dtype=np.float64)
    rss = np.array([r.get(key) if r.get(key) is not None else np.nan for r in rows], dtype=np.float64)
    base = rss[(t >= from_s) & (t < from_s + window_s)]
    end = rss[t > t.max() - window_s] if t.size else rss
    base, end = base[np.isfinite(base)], end[np.isfinite(end)]
    if base.size == 0 or end.size == 0 or t.max() - window_s < from_s + window_s:
        return {"from_s": from_s, "base_mb": None, "end_mb": None, "growth_pct": None,
                "note": f"run too short to compare RSS from {from_s:g} s to the end"}
    b, e = float(np.median(base)), float(np.median(end))
    return {"from_s": from_s, "to_s": float(t.max()), "base_mb": b, "end_mb": e, "growth_pct": 100.0 * (e - b) / b,
            "max_mb": float(np.nanmax(rss))}


def analyse(raw: dict, short: bool = False) -> dict:
    mode = "short" if short else "full"
    th = THRESHOLDS[mode]
    args, rows = raw["args"], raw["rows"]
    commands = np.array(raw["commands"], dtype=np.int64).reshape(-1, 2)
    chunks = np.array(raw["chunks"], dtype=np.int64).reshape(-1, 2)
    start_wall, end_wall = int(raw["start_wall_ns"]), int(raw["end_wall_ns"])
    period_s = 1.0 / args["command_rate"] if args["command_rate"] > 0 else _median_period(commands[:, 0])
    first = int(commands[:, 0].min()) if len(commands) else end_wall
    window = (first + int(th["settle_s"] * 1e9), end_wall)
    faults = fault_outcomes(commands[:, 1], raw.get("faults", []), end_wall, start_wall)
    excluded = [tuple(f["exclude_ns"]) for f in faults]
    host = machine()
    cores = int(raw.get("cores") or host["cores"])
    held_rows = contended_rows(rows, cores)
    held = contended_windows(held_rows, start_wall)
    if not th["judge_contended"]:
        excluded += held
        mark_contended_recoveries(faults, raw.get("faults", []), held, end_wall, th["recover_s"])
    arrival = command_timing(commands[:, 0], period_s, *window, start_wall, excluded)
    source = command_timing(commands[:, 1], period_s, *window, start_wall, excluded)
    in_window = [r for r in rows if window[0] <= start_wall + r["t"] * 1e9 <= window[1]]
    chunk_rx = chunks[(chunks[:, 0] >= window[0]) & (chunks[:, 0] <= window[1])] if len(chunks) else chunks
    window_s = max(1e-9, (window[1] - window[0]) * 1e-9)
    stages = {s: percentiles([r["diag"][f"{s}_ms"] for r in in_window if isinstance(r["diag"].get(f"{s}_ms"), float)])
              for s in STAGES}
    ages = {}
    for key in sorted({k for r in in_window for k in r["diag"] if k.startswith("age_")}):
        ages[key] = percentiles([r["diag"][key] for r in in_window if isinstance(r["diag"].get(key), float)])
    rss = {name: rss_growth(rows, f"{name}_rss_mb", th["rss_from_s"]) for name in ("node", "robot")}
    rss["node_anon"] = rss_growth(rows, "node_anon_mb", th["rss_from_s"])  # the heap alone (no DDS shared memory)
    cpu = {k: _mean([r.get(k) for r in in_window]) for k in ("node_cpu_pct", "robot_cpu_pct", "monitor_cpu_pct",
                                                             "machine_cpu_pct", "loadavg_1m")}
    report = {
        "mode": mode, "thresholds": th, "load": {k: args[k] for k in ("cameras", "jpeg", "width", "height",
                                                                     "camera_rate", "joint_rate", "command_rate",
                                                                     "preset", "num_threads", "dds_profile")},
        "requested_s": float(args["duration"]), "duration_s": round((end_wall - start_wall) * 1e-9, 1),
        "window_s": round(window_s, 1),
        "command_period_s": period_s,
        "commands_arrival": arrival, "commands_source": source,
        "chunks": {"n": int(len(chunk_rx)), "rate_hz": len(chunk_rx) / window_s,
                   "per_second": percentiles([r["chunks"] / r.get("dt", 1.0) for r in in_window], ps=(1, 50)),
                   "latency_ms": percentiles((chunk_rx[:, 0] - chunk_rx[:, 1]) * 1e-6 if len(chunk_rx) else [])},
        "stages_ms": stages, "input_ages_s": ages, "rss": rss, "cpu_mean": cpu, "injected_faults": faults,
        "contended": {"judged": th["judge_contended"], "others_at_least_pct": others_bound_pct(cores),
                      "seconds": round(sum(r.get("dt", 1.0) for r in held_rows), 1),
                      "windows_s": [[round((a - start_wall) * 1e-9, 1), round((b - start_wall) * 1e-9, 1)]
                                    for a, b in held]},
        "diagnostics_error_seconds": sum(1 for r in in_window if r.get("diag_level") == 2),
        "log": {"error_lines": raw["error_lines"], "crash_lines": raw["crash_lines"],
                "first_problem_lines": raw["log_lines"]},
        "exit_codes": raw["exit_codes"], "interrupted": raw["interrupted"],
        "machine": host,
    }
    report["checks"] = checks(report, th)
    report["passed"] = all(c["passed"] for c in report["checks"].values())
    return report


def checks(report: dict, th: dict) -> Dict[str, dict]:
    node_rss = report["rss"]["node"]["growth_pct"]
    gap = report["commands_arrival"].get("max_gap_periods")
    p99 = report["commands_arrival"]["error_ms"]["p99"]
    mean, period_ms = report["commands_arrival"].get("mean_period_ms"), report["command_period_s"] * 1e3
    crashes = sum(report["log"]["crash_lines"].values())
    contended = report["contended"]
    # short mode, where other processes held the machine whenever commands flowed: no interval left to judge
    unjudged = (not contended["judged"] and contended["seconds"] > 0 and
                report["commands_arrival"].get("all_excluded", False))
    held = sum(1 for f in report["injected_faults"] if f.get("recovery_contended"))
    others = (f"; {contended['seconds']:g} s when other processes left the soak under {LEFT_PCT:g} % of a core "
              f"{'counted: not an idle machine' if contended['judged'] else 'not judged'}"
              if contended["seconds"] else "")
    out = {
        "rss_growth": (node_rss is not None and node_rss < th["rss_growth_pct"],
                       f"node RSS growth {_fmt(node_rss, '%')} from {th['rss_from_s']:g} s to the end "
                       f"(< {th['rss_growth_pct']:g} %)"),
        "command_gaps": (unjudged or (gap is not None and gap <= th["max_gap_periods"]),
                         f"longest command interval {_fmt(gap, ' periods')} (<= {th['max_gap_periods']:g})" + others),
        "p99_period_error": ((p99 is not None and p99 <= th["p99_period_error_ms"]) if th["p99_period_error_ms"]
                             else True,
                             f"p99 command period error {_fmt(p99, ' ms')} on arrival " +
                             (f"(target <= {th['p99_period_error_ms']:g} ms)" if th["p99_period_error_ms"] else
                              "(reported only in this mode; the 2 ms target is the full soak's, on an idle machine)")),
        "command_rate": (unjudged or (mean is not None and
                                      mean <= period_ms * (1 + th["mean_period_excess_pct"] / 100)),
                         f"mean command period {_fmt(mean, ' ms')} (<= {period_ms:g} ms + "
                         f"{th['mean_period_excess_pct']:g} %)" + others),
        "faults_stop_and_recover": (all(f["stopped"] and (f.get("recovery_contended") or (
            f["recovered_after_s"] is not None and f["recovered_after_s"] <= th["recover_s"]))
            for f in report["injected_faults"]),
            f"{len(report['injected_faults'])} injected inference failures: commands stopped within 1 s and came back "
            f"within {th['recover_s']:g} s of the end of each" + (
                f" ({held} of them: when other processes held the machine after it, how soon not judged)"
                if held else "")),
        "no_unhandled_exceptions": (crashes == 0, f"{crashes} traceback / abort lines in the two logs (0)"),
        "clean_exit": (all(c == 0 for c in report["exit_codes"].values()),
                       f"exit codes {report['exit_codes']} (all 0 after SIGINT)"),
        "ran_to_the_end": (not report["interrupted"] and report["duration_s"] >= report["requested_s"] - 2.0,
                           f"ran {report['duration_s']:g} of {report['requested_s']:g} s"),
    }
    return {k: {"passed": bool(ok), "text": text} for k, (ok, text) in out.items()}


def summary(report: dict) -> str:
    a, s = report["commands_arrival"], report["commands_source"]
    lines = [f"turbopi-soak ({report['mode']}): {report['duration_s']:g} s, measured over {report['window_s']:g} s",
             f"  load: {report['load']}",
             f"  machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, mean load "
             f"{_fmt(report['cpu_mean']['machine_cpu_pct'], ' %')} of one core x cores "
             f"(loadavg {_fmt(report['cpu_mean']['loadavg_1m'], '')})",
             f"  chunks: {report['chunks']['rate_hz']:.2f}/s, end-to-end latency p50 "
             f"{_fmt(report['chunks']['latency_ms']['p50'], ' ms')} p99 "
             f"{_fmt(report['chunks']['latency_ms']['p99'], ' ms')}",
             f"  commands: {a['n']} at {_fmt(a['mean_period_ms'], ' ms')} mean period; |period error| on arrival p50 "
             f"{_fmt(a['error_ms']['p50'], ' ms')} p99 {_fmt(a['error_ms']['p99'], ' ms')} max "
             f"{_fmt(a['error_ms']['max'], ' ms')}; at the source p99 {_fmt(s['error_ms']['p99'], ' ms')} max "
             f"{_fmt(s['error_ms']['max'], ' ms')}; gaps over 2 periods: {a['gaps'].get('over_2_periods')}",
             "  stages (per-second medians) p50/p99 ms: " + ", ".join(
                 f"{k} {_fmt(v['p50'], '')}/{_fmt(v['p99'], '')}" for k, v in report["stages_ms"].items() if v["n"]),
             f"  CPU mean: node {_fmt(report['cpu_mean']['node_cpu_pct'], ' %')}, fake_robot "
             f"{_fmt(report['cpu_mean']['robot_cpu_pct'], ' %')}, this monitor "
             f"{_fmt(report['cpu_mean']['monitor_cpu_pct'], ' %')}",
             f"  RSS node: {_fmt(report['rss']['node'].get('base_mb'), ' MiB')} -> "
             f"{_fmt(report['rss']['node'].get('end_mb'), ' MiB')}; log error lines {report['log']['error_lines']}"]
    for name, c in report["checks"].items():
        lines.append(f"  {'PASS' if c['passed'] else 'FAIL'}  {name}: {c['text']}")
    lines.append(f"turbopi-soak: {'PASSED' if report['passed'] else 'FAILED'}")
    return "\n".join(lines)


def plot(raw: dict, report: dict, out: Path) -> List[Path]:
    """rss.png, latency_hist.png, command_period_hist.png, timeline.png in ``out`` (matplotlib, Agg: no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = raw["rows"]
    t = np.array([r["t"] for r in rows])
    figures = (("rss.png", lambda: _rss_figure(plt, t, rows, report)),
               ("latency_hist.png", lambda: _latency_figure(plt, raw, report)),
               ("command_period_hist.png", lambda: _command_period_figure(plt, raw, report)),
               ("timeline.png", lambda: _timeline_figure(plt, t, rows)))
    written = []
    for name, draw in figures:
        fig = draw()
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _series(rows: List[dict], key: str) -> list:
    """One sampled value per row, NaN where it was not read (a gap in the line)."""
    return [r.get(key) if r.get(key) is not None else np.nan for r in rows]


def _rss_figure(plt, t, rows: List[dict], report: dict):
    """RSS of both processes (the node's heap and shared memory apart), with the windows the growth check compares."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (("node_rss_mb", "turbopi_node"), ("node_anon_mb", "turbopi_node: heap (RssAnon)"),
                       ("node_shmem_mb", "turbopi_node: shared memory (RssShmem)"), ("robot_rss_mb", "fake_robot")):
        ax.plot(t, _series(rows, key), label=label)
    g = report["rss"]["node"]
    if g.get("base_mb") is not None:
        ax.axvspan(g["from_s"], g["from_s"] + RSS_WINDOW_S, color="grey", alpha=0.2, label="compared windows")
        ax.axvspan(t.max() - RSS_WINDOW_S, t.max(), color="grey", alpha=0.2)
    ax.set(xlabel="seconds", ylabel="RSS (MiB)", title=f"RSS over time (node growth {_fmt(g['growth_pct'], ' %')})")
    ax.legend()
    return fig


def _latency_figure(plt, raw: dict, report: dict):
    """Each chunk's stamp-to-arrival latency, then the node's per-second stage medians, as histograms."""
    rows = raw["rows"]
    stages = [s for s in STAGES if report["stages_ms"][s]["n"]]
    fig, axes = plt.subplots(1, len(stages) + 1, figsize=(3 * (len(stages) + 1), 3.2), squeeze=False)
    axes = axes[0]
    chunks = np.array(raw["chunks"], dtype=np.int64).reshape(-1, 2)
    e2e = (chunks[:, 0] - chunks[:, 1]) * 1e-6
    axes[0].hist(e2e, bins=40)
    axes[0].set(title="each chunk: stamp to arrival", xlabel="ms")
    for ax, s in zip(axes[1:], stages):
        ax.hist([r["diag"][f"{s}_ms"] for r in rows if isinstance(r["diag"].get(f"{s}_ms"), float)], bins=30)
        ax.set(title=f"{s} (1 Hz medians)", xlabel="ms")
    return fig


def _command_period_figure(plt, raw: dict, report: dict):
    """The intervals between commands, on arrival and at the source, against the target period and its +-2 ms."""
    period_ms = report["command_period_s"] * 1e3
    fig, ax = plt.subplots(figsize=(8, 4))
    commands = np.array(raw["commands"], dtype=np.int64).reshape(-1, 2)
    bins = np.linspace(0, 3 * period_ms, 121)
    for col, label in ((0, "arrival (rmw reception)"), (1, "source (node publish)")):
        if len(commands) > 1:
            iv = np.diff(np.sort(commands[:, col])) * 1e-6
            ax.hist(np.clip(iv, 0, bins[-1]), bins=bins, histtype="step", label=label, log=True)
    for x, style in ((period_ms, "-"), (period_ms - 2, ":"), (period_ms + 2, ":"), (2 * period_ms, "--")):
        ax.axvline(x, color="k", linestyle=style, linewidth=0.8)
    ax.set(xlabel="interval between commands (ms; the last bin holds longer ones)", ylabel="count",
           title=f"command period (target {period_ms:g} ms, +-2 ms dotted, 2 periods dashed)")
    ax.legend()
    return fig


def _timeline_figure(plt, t, rows: List[dict]):
    """Commands and chunks per second, and the CPU of each process and of the whole machine, over time."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax1.plot(t, [r["commands"] / r.get("dt", 1.0) for r in rows], label="commands/s")
    ax1.plot(t, [r["chunks"] / r.get("dt", 1.0) for r in rows], label="chunks/s")
    ax1.legend()
    for key, label in (("node_cpu_pct", "node"), ("robot_cpu_pct", "fake_robot"), ("monitor_cpu_pct", "monitor"),
                       ("machine_cpu_pct", "whole machine")):
        ax2.plot(t, _series(rows, key), label=label)
    ax2.set(xlabel="seconds", ylabel="CPU % (100 = one core)")
    ax2.legend()
    return fig


def machine() -> dict:
    import os
    import platform

    from .machine import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}


def _median_period(times_ns) -> float:
    iv = np.diff(np.sort(np.asarray(times_ns, dtype=np.int64))) * 1e-9
    return float(np.median(iv)) if iv.size else 0.02


def _mean(values) -> Optional[float]:
    v = [x for x in values if isinstance(x, (int, float))]
    return float(np.mean(v)) if v else None


def _fmt(x, unit: str) -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"
