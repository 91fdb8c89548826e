"""Test-only fault injection into the node's inference (documented in docs/reliability.md; never set on a robot).

With the environment variable TURBOPI_TEST_FAULTS=<path to a JSON file>, the node reads that file before every
inference (a missing or empty file means no fault) and, per its fields:
    {"delay_s": 0.05}    sleeps this long first (a slow engine: a stand-in for a GPU's inference time)
    {"hang_s": 3.0}      sleeps this long (an engine that hangs), or until the file no longer asks for a hang
    {"raise": "text"}    raises RuntimeError("injected fault: text") (an engine failure)
    {"entered_file": p}  writes the file p first, as the inference that read these faults starts (its observation
                         taken): a test waits for it instead of guessing when an inference is in flight
Tests rewrite the file while the node runs to switch faults on and off.

With TURBOPI_TEST_CPU_GRAPHS=1, a node on CPU runs its policy with graphs in the CPU static-replay mode
(Policy.use_graphs(static_replay_on_cpu=True)): the warm-up, the capture counts and their /diagnostics values as with
CUDA graphs, tested without a GPU. No speed-up: a CPU "replay" runs the function again.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

ENV = "TURBOPI_TEST_FAULTS"
CPU_GRAPHS_ENV = "TURBOPI_TEST_CPU_GRAPHS"
WARNING = f"test-only hooks are on ({ENV} or {CPU_GRAPHS_ENV}): never on a robot"


class InjectedFault(RuntimeError):
    pass


def read_faults(path: str) -> dict:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    return json.loads(text) if text.strip() else {}


def enabled() -> bool:
    """Whether a test-only hook is on (the node warns: never on a robot)."""
    return bool(os.environ.get(ENV)) or bool(os.environ.get(CPU_GRAPHS_ENV))


def cpu_graphs(policy):
    """``policy``, with graphs in the CPU static-replay mode when TURBOPI_TEST_CPU_GRAPHS is set and it runs on CPU
    without graphs."""
    if os.environ.get(CPU_GRAPHS_ENV) and policy.device.type == "cpu" and policy.graph_stats is None:
        policy.use_graphs(static_replay_on_cpu=True)
    return policy


def hang(path: str, seconds: float, poll_s: float = 0.05) -> None:
    """Sleep ``seconds``, or less: until the faults file no longer asks for a hang (a test ends a hang as soon as it
    has seen what it waits for, however long a loaded machine took to report it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(poll_s, max(0.0, end - time.monotonic())))
        try:
            if not read_faults(path).get("hang_s"):
                return
        except ValueError:  # the file caught half written: the hang goes on
            pass


def wrap(infer: Callable, path: Optional[str] = None) -> Callable:
    """``infer`` itself unless TURBOPI_TEST_FAULTS (or ``path``) is set; else ``infer`` behind the faults file."""
    path = path or os.environ.get(ENV)
    if not path:
        return infer

    def faulty(*args, **kwargs):
        faults = read_faults(path)
        if faults.get("entered_file"):
            with open(faults["entered_file"], "w") as f:
                f.write(f"{time.monotonic():.6f}\n")
        if faults.get("delay_s"):
            time.sleep(float(faults["delay_s"]))
        if faults.get("hang_s"):
            hang(path, float(faults["hang_s"]))
        if faults.get("raise"):
            raise InjectedFault(f"injected fault: {faults['raise']}")
        return infer(*args, **kwargs)

    return faulty
