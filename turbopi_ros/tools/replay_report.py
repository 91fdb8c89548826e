"""What turbopi-replay writes: chunks.mcap, report.json and the PNGs.

- chunks.mcap: the chunks on /turbopi_node/action_chunk (JointTrajectory, as the node publishes them: conversions'
  chunk_to_trajectory) at their observation stamps, and the recorded joint states at their recorded times, so that
  Foxglove or ``ros2 bag play`` shows both.
- report.json: per action joint, the error of the predicted chunk against the recorded joint positions at 0.1, 0.5
  and 1.0 s after the observation (the chunk sampled as the node samples it, policy/chunking.py; the recording
  interpolated linearly between joint states, by header stamp); latency per stage; chunks and skips by reason.
- chunks.png (each action joint: the recording and every predicted chunk over it), error_vs_horizon.png (mean
  absolute error against time after the observation), latency.png (histogram of the total inference latency).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .bags import TRAJECTORY, BagWriter, rclpy_to_cdr
from .processes import CHUNK_TOPIC
from ..ros.conversions import chunk_to_trajectory, stamp_to_sec
from ..ros.node_config import NodeConfig
from ..policy.chunking import Chunk
from ..policy.policy import STAGES

CHUNKS_BAG = "chunks.mcap"
HORIZONS_S = (0.1, 0.5, 1.0)
MAX_PLOTTED_CHUNKS = 200


def recorded_positions(joint_states, joints) -> Dict[str, tuple]:
    """joint -> (stamps [s], positions) from the recorded JointState messages that name it, sorted by stamp."""
    series: Dict[str, list] = {j: [] for j in joints}
    for _, msg in joint_states:
        stamp = stamp_to_sec(msg.header.stamp)
        for name, position in zip(msg.name, msg.position):
            if name in series:
                series[name].append((stamp, float(position)))
    out = {}
    for joint, pairs in series.items():
        pairs.sort()
        out[joint] = (np.array([t for t, _ in pairs]), np.array([x for _, x in pairs]))
    return out


def _at(series: tuple, t: float) -> float:
    stamps, values = series
    if len(stamps) == 0 or t < stamps[0] or t > stamps[-1]:
        return float("nan")  # outside the recording: no ground truth
    return float(np.interp(t, stamps, values))


def errors(chunks, joints: List[str], rate_hz: float, recorded: Dict[str, tuple]):
    """(at HORIZONS_S: joint -> horizon -> stats; the curve: horizon times and joint -> mean absolute error)."""
    at_horizon = {j: {f"{h:g}": [] for h in HORIZONS_S} for j in joints}
    horizon = max((len(c.actions) for c in chunks), default=0)
    curve = {j: [[] for _ in range(horizon)] for j in joints}
    for chunk in chunks:
        schedule = Chunk(chunk.actions, chunk.stamp, rate_hz)
        for h in HORIZONS_S:
            predicted = schedule.at(chunk.stamp + h)
            if predicted is None:
                continue  # the chunk ends before this horizon
            for i, j in enumerate(joints):
                at_horizon[j][f"{h:g}"].append(predicted[i] - _at(recorded[j], chunk.stamp + h))
        for k in range(len(chunk.actions)):
            for i, j in enumerate(joints):
                curve[j][k].append(abs(chunk.actions[k, i] - _at(recorded[j], chunk.stamp + (k + 1) / rate_hz)))
    stats = {j: {h: _error_stats(e) for h, e in by_h.items()} for j, by_h in at_horizon.items()}
    mae = {j: [_nanmean(v) for v in per_k] for j, per_k in curve.items()}
    return stats, [(k + 1) / rate_hz for k in range(horizon)], mae


def _nanmean(values) -> Optional[float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def _error_stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mae": None, "rmse": None, "max_abs": None, "mean": None}
    return {"n": int(len(v)), "mae": float(np.abs(v).mean()), "rmse": float(np.sqrt((v ** 2).mean())),
            "max_abs": float(np.abs(v).max()), "mean": float(v.mean())}


def latency_ms(chunks) -> Dict[str, dict]:
    out = {}
    for stage in STAGES + ("total",):
        v = np.array([c.timings[stage] * 1e3 for c in chunks if stage in c.timings])
        if len(v):
            out[stage] = {"median": float(np.median(v)), "mean": float(v.mean()),
                          "p90": float(np.percentile(v, 90)), "max": float(v.max())}
    return out


REPORTED_MODEL = ("checkpoint", "preset", "device", "dtype", "seed", "num_steps")  # model settings in the report


def write_bag(path: Path, config: NodeConfig, result) -> None:
    joints, rate = list(config.action.joints), config.control_rate_hz
    entries = [(t_ns, result.joint_states_topic, msg) for t_ns, msg in result.joint_states]
    for chunk in result.chunks:
        trajectory = chunk_to_trajectory(chunk.actions, joints, chunk.stamp, rate)
        t_ns = trajectory.header.stamp.sec * 1_000_000_000 + trajectory.header.stamp.nanosec
        entries.append((t_ns, CHUNK_TOPIC, rclpy_to_cdr(trajectory, TRAJECTORY)))
    with BagWriter(path) as bag:
        bag.connection(CHUNK_TOPIC, TRAJECTORY)
        for t_ns, topic, item in sorted(entries, key=lambda e: e[0]):
            if topic == CHUNK_TOPIC:
                bag.write(topic, TRAJECTORY, t_ns, item)
            else:
                bag.write_msg(topic, t_ns, item)


def write(out: Path, config: NodeConfig, policy, result, info: dict) -> dict:
    """Write every output into ``out`` and return the report."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    joints, rate = list(config.action.joints), config.control_rate_hz
    recorded = recorded_positions(result.joint_states, joints)
    stats, horizons, mae = errors(result.chunks, joints, rate, recorded)
    t0 = info["start_ns"] * 1e-9
    report = {
        "bag": info["bag"], "params_file": info["params_file"], "mode": info["mode"], "period_s": info["period_s"],
        "window_s": {"start": round((info["start_ns"] - info["bag_start_ns"]) * 1e-9, 6),
                     "end": round((info["end_ns"] - info["bag_start_ns"]) * 1e-9, 6)},
        "model": {k: getattr(config.model, k) for k in REPORTED_MODEL},
        "torch_threads": torch.get_num_threads(),
        "instants": result.instants, "chunks": len(result.chunks),
        "skips": {"total": sum(s["count"] for s in result.skips.values()), "by_reason": result.skips},
        "joints_without_recording": [j for j in joints if len(recorded[j][0]) == 0],
        "error_at_horizon": stats,
        "latency_ms": latency_ms(result.chunks),
        "observation_interval_s": _median_interval([c.stamp for c in result.chunks]),
        "replay_wall_s": info["wall_s"],
    }
    if result.recorded or result.not_rebuilt:
        report["recorded_chunks"] = {
            "compared": len(result.recorded), "reproduced_bit_for_bit": sum(r["reproduced"] for r in result.recorded),
            "needed_another_candidate": sum(r["reproduced"] and r["tries"] > 1 for r in result.recorded),
            "max_abs_diff": max((r.get("max_abs_diff") or 0.0 for r in result.recorded), default=None),
            "noise_offset": result.noise_offset,
            # chunks the node computed (its noise drawn) but dropped (chunk_gate.py), found between recorded ones
            "dropped_by_the_node": sum(r.get("dropped_before", 0) for r in result.recorded),
            # recorded chunks not compared because the bag lacks their inputs: index among the recorded chunks
            # (0: the first), stamp, seconds from the bag's start, kind and why (replay.why_not_rebuildable)
            "not_rebuilt": [dict(r, at_s=round((r["stamp_ns"] - info["bag_start_ns"]) * 1e-9, 6))
                            for r in result.not_rebuilt]}
    write_bag(out / CHUNKS_BAG, config, result)
    plot(out, result, joints, rate, recorded, horizons, mae, t0)
    report["outputs"] = sorted(f.name for f in out.iterdir() if f.suffix in (".mcap", ".png")) + ["report.json"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _median_interval(stamps) -> Optional[float]:
    return float(np.median(np.diff(stamps))) if len(stamps) > 1 else None


def plot(out: Path, result, joints, rate: float, recorded, horizons, mae, t0: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    chunks = result.chunks
    shown = chunks if len(chunks) <= MAX_PLOTTED_CHUNKS else \
        [chunks[i] for i in np.linspace(0, len(chunks) - 1, MAX_PLOTTED_CHUNKS).astype(int)]
    fig, axes = plt.subplots(len(joints), 1, figsize=(10, 1.9 * len(joints) + 0.8), sharex=True, squeeze=False)
    for i, (joint, ax) in enumerate(zip(joints, axes[:, 0])):
        stamps, values = recorded[joint]
        ax.plot(stamps - t0, values, color="black", lw=1.5, label="recorded", zorder=3)
        for n, chunk in enumerate(shown):
            times = chunk.stamp - t0 + np.arange(1, len(chunk.actions) + 1) / rate
            ax.plot(times, chunk.actions[:, i], lw=0.8, alpha=0.6, color=plt.cm.viridis(n / max(len(shown) - 1, 1)),
                    label="predicted chunks" if n == 0 else None)
        ax.set_ylabel(joint)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[0, 0].set_title(f"predicted chunks over the recorded joint positions ({len(shown)} of {len(chunks)} chunks)")
    axes[-1, 0].set_xlabel("bag time from the start of the replay [s]")
    fig.tight_layout()
    fig.savefig(out / "chunks.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for joint in joints:
        values = np.array([np.nan if v is None else v for v in mae[joint]], dtype=np.float64)
        if np.any(np.isfinite(values)):
            ax.plot(horizons, values, label=joint)
    for h in HORIZONS_S:
        ax.axvline(h, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("time after the observation [s]")
    ax.set_ylabel("mean |predicted - recorded|")
    ax.set_title(f"error against horizon ({len(chunks)} chunks)")
    if joints:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "error_vs_horizon.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    total = [c.timings["total"] * 1e3 for c in chunks]
    if total:
        ax.hist(total, bins=min(40, max(5, len(total) // 3)), color="tab:blue")
        ax.axvline(float(np.median(total)), color="black", ls="--", label=f"median {np.median(total):.1f} ms")
        stages = ", ".join(f"{s} {np.median([c.timings[s] * 1e3 for c in chunks]):.1f}" for s in STAGES)
        ax.set_title(f"inference latency, {len(total)} chunks\nmedian ms: {stages}", fontsize=9)
        ax.legend()
    ax.set_xlabel("total latency [ms]")
    ax.set_ylabel("chunks")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=90)
    plt.close(fig)


def summary_lines(report: dict, out: Path) -> List[str]:
    lines = [f"replayed {report['window_s']['end'] - report['window_s']['start']:.1f} s of {report['bag']} "
             f"({report['mode']}): {report['chunks']} chunks, {report['skips']['total']} skips "
             f"in {report['replay_wall_s']:.1f} s"]
    for reason, s in sorted(report["skips"]["by_reason"].items(), key=lambda kv: -kv[1]["count"]):
        lines.append(f"  skipped {s['count']:5d} x  {reason}")
    if "total" in report["latency_ms"]:
        lines.append(f"latency: median {report['latency_ms']['total']['median']:.1f} ms per chunk")
    for joint, by_h in report["error_at_horizon"].items():
        cells = "  ".join(f"{h} s: {s['mae']:.4f}" if s["mae"] is not None else f"{h} s: -" for h, s in by_h.items())
        lines.append(f"  {joint:<16} mean abs error  {cells}")
    if "recorded_chunks" in report:
        r = report["recorded_chunks"]
        lines.append(f"recorded chunks reproduced bit for bit: {r['reproduced_bit_for_bit']} of {r['compared']}")
        if r["not_rebuilt"]:
            lines.append(f"  not compared: {len(r['not_rebuilt'])} recorded chunks whose inputs are not all in the bag")
        for c in r["not_rebuilt"]:
            lines.append(f"    recorded chunk {c['index']} (at {c['at_s']:.3f} s): {c['kind']}: {c['why']}")
        if r["noise_offset"]:
            lines.append(f"  the recording began after the node's first {r['noise_offset']} chunks (noise skipped)")
        if r.get("dropped_by_the_node"):
            lines.append(f"  the node computed and dropped {r['dropped_by_the_node']} chunks between recorded ones "
                         "(noise skipped)")
        if r["compared"] and not r["reproduced_bit_for_bit"]:
            lines.append("  none: another checkpoint, seed, device or thread count, or a recording that began more "
                         "than 10 chunks after the node's first (its noise generator is then ahead by those)")
    lines.append(f"wrote {out}/: " + ", ".join(report["outputs"]))
    return lines
