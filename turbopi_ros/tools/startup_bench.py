"""turbopi-startup-bench: how long turbopi_node takes from a fresh process to ready, cold and warm.

A robot restarts its node often; with ``model.compile`` the first start on a machine compiles (inductor, seconds to
a minute) and later starts should load from ``model.cache_dir``. This runs what the node runs before it reports ready
(params_file.load, policy_from_config, ros/warm_up.WarmUp: every graph capture and the first inference), each time in
a new Python process, from a node parameter file: first with a fresh, empty cache directory (cold), then ``--warm``
more times with the same directory (warm). Each run reports its phases: imports (torch and the package), building
the policy (weights loaded or made), the warm-up, and the process's whole wall time.

    turbopi-startup-bench --params config/demo_tiny.yaml --set model.compile=true [--warm 2] [--json F]

``--set NAME=VALUE`` overrides a parameter (VALUE read as YAML: true, 3, cuda). ``--cache-dir D`` uses D instead of
a fresh directory (then the first run is only as cold as D is).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import yaml

from .processes import run_reporting

CHILD_MARK = "turbopi-startup-bench child:"


def params_with(path: Path, overrides: Dict[str, object], out: Path) -> Path:
    """A parameter file with turbopi_node's parameters from ``path`` and ``overrides`` on top, written to ``out``."""
    from ..ros.params_file import NODE, read_sections

    values = dict(read_sections(path))
    values.update(overrides)
    out.write_text(yaml.safe_dump({f"/**/{NODE}": {"ros__parameters": values}}, sort_keys=False))
    return out


def parse_set(items: Sequence[str]) -> Dict[str, object]:
    overrides: Dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. model.compile=true")
        overrides[name.strip()] = yaml.safe_load(value)
    return overrides


def child(params: Path) -> Dict[str, object]:
    """In the child process: the node's start-up, phase by phase (seconds)."""
    t0 = time.perf_counter()
    import torch  # noqa: F401 - timed: the node imports it before anything else it does

    from ..ros.node_params import policy_from_config
    from .compile_start import cache_counters
    from ..ros.params_file import load
    from ..ros.warm_up import WarmUp

    t1 = time.perf_counter()
    config = load(params)
    policy = policy_from_config(config)
    t2 = time.perf_counter()
    warm = WarmUp(policy, config.cameras.names, config.state.joints, lambda: config.prompt,
                  other_prompts=config.model.warm_up_prompts)
    log = warm.run()
    t3 = time.perf_counter()
    stats = policy.graph_stats
    return {"imports_s": t1 - t0, "build_s": t2 - t1, "warm_up_s": t3 - t2, "log": log,
            "graph_captures": stats.captures if stats is not None else 0, "device": str(policy.device),
            "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""),
            "inductor_cache": cache_counters() if config.model.compile else {}}


def run_child(params: Path, timeout_s: float) -> Dict[str, object]:
    """One fresh process: its phases and its whole wall time (``process_s``)."""
    return run_reporting([sys.executable, "-m", "turbopi_ros.tools.startup_bench", "--child", str(params)],
                         CHILD_MARK, "the start-up run", timeout_s)


def bench(params: Path, overrides: Dict[str, object], warm: int, cache_dir: str = "",
          timeout_s: float = 900.0) -> Dict[str, object]:
    """Cold (a fresh cache directory unless ``cache_dir``), then ``warm`` runs with the same directory."""
    with tempfile.TemporaryDirectory(prefix="turbopi_startup_") as tmp:
        cache = cache_dir or str(Path(tmp) / "inductor")
        overrides = dict(overrides, **{"model.cache_dir": cache})
        derived = params_with(params, overrides, Path(tmp) / "params.yaml")
        runs: List[Dict[str, object]] = []
        for i in range(1 + warm):
            r = run_child(derived, timeout_s)
            r["run"] = "cold" if i == 0 and not cache_dir else "warm"
            runs.append(r)
    from .machine import cpu_model

    return {"machine": f"{cpu_model()}, {os.cpu_count()} cores",
            "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()), "params": str(params),
            "overrides": {k: v for k, v in overrides.items() if k != "model.cache_dir"},
            "cache_dir": cache_dir or "(fresh, removed after)", "runs": runs}


def table(result: Dict[str, object]) -> List[str]:
    rows = [f"start-up from a fresh process to ready: {result['params']} with {result['overrides']}",
            f"  machine: {result['machine']}, load average {result['load_average']}",
            f"  {'run':<5} {'imports':>8} {'build':>7} {'warm-up':>8} {'process':>8}  graphs  inductor cache  "
            "warm-up log"]
    for r in result["runs"]:
        c = r["inductor_cache"]
        cache = f"{c.get('fxgraph_cache_hit', 0)} hit, {c.get('fxgraph_cache_miss', 0)} miss" if c else "-"
        rows.append(f"  {r['run']:<5} {r['imports_s']:7.1f}s {r['build_s']:6.1f}s {r['warm_up_s']:7.1f}s "
                    f"{r['process_s']:7.1f}s  {r['graph_captures']:6d}  {cache:<14}  {r['log']}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("config/demo_tiny.yaml"), help="a node parameter file")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a parameter")
    ap.add_argument("--warm", type=int, default=2, help="warm runs after the cold one")
    ap.add_argument("--cache-dir", default="", help="use this inductor cache instead of a fresh one")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    ap.add_argument("--json", type=Path, help="write the runs here")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(CHILD_MARK + json.dumps(child(args.child)), flush=True)
        return 0
    try:
        result = bench(args.params, parse_set(args.set), args.warm, args.cache_dir, args.timeout_s)
    except (ValueError, RuntimeError) as e:
        print(f"turbopi-startup-bench: {e}", file=sys.stderr)
        return 1
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
