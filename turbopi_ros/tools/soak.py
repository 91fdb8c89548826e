"""turbopi-soak: fake_robot and turbopi_node as real processes under a sensor load, watched for minutes.

Both nodes start as their own processes (``python -m turbopi_ros.tools.fake_robot`` / ``turbopi_ros.node``) with a
generated parameter file, on a private ROS_DOMAIN_ID with localhost-only discovery. This process subscribes to
~/joint_command (each message's rmw reception and source timestamps), ~/action_chunk and /diagnostics, and once a
second samples both processes' RSS and CPU time (/proc), the chunks and commands of that second, the node's stage
latencies and input ages (from /diagnostics) and the error lines in both logs. At the end it writes report.json and
plots (soak_report.py) and prints a summary with pass/fail against the thresholds; exit 0 only if all pass.

    turbopi-soak [--duration 600] [--short] [--out DIR] [--cameras 3 --width 640 --height 480 --camera-rate 30
                 --jpeg 1 --joint-rate 500 --command-rate 50]

The default load is the hard one: 3 cameras 640x480 rgb8 at 30 Hz (one of them JPEG) and joint states at 500 Hz;
commands at a fixed 50 Hz (so that the 2 ms target of the command period applies). --short is the CI mode (60 s,
relaxed thresholds: see soak_report.THRESHOLDS).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from ..ros import faults, ros_compat
from . import soak_report
from . import processes
from .processes import config_file
from ..ros.node_status import STATUS_NAME

CAMERA_SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
# Lines that count as errors in a node's log; the last three are unhandled exceptions and crashes.
ERROR_MARKS = ("[ERROR]", "[FATAL]")
CRASH_MARKS = ("Traceback (most recent call last)", "terminate called", "Segmentation fault", "core dumped")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- parameters -------------------------------------------------------------------------------------------------------
def soak_params(args) -> Dict[str, dict]:
    """The demo's parameters with the soak's load: ``args.cameras`` camera slots (the first ``args.jpeg`` of them
    JPEG-compressed), their size and rate, the joint state rate, a fixed command rate."""
    demo = yaml.safe_load(config_file("demo_tiny.yaml").read_text())
    node = dict(demo["/**/turbopi_node"]["ros__parameters"])
    robot = dict(demo["/**/fake_robot"]["ros__parameters"])
    if not 1 <= args.cameras <= len(CAMERA_SLOTS):
        raise ValueError(f"--cameras {args.cameras}: the model has {len(CAMERA_SLOTS)} camera slots (1-3)")
    if not 0 <= args.jpeg <= args.cameras:
        raise ValueError(f"--jpeg {args.jpeg}: at most --cameras ({args.cameras}) cameras can be JPEG")
    names = list(CAMERA_SLOTS[:args.cameras])
    compressed = [i < args.jpeg for i in range(args.cameras)]
    topics = [f"/soak/{name}/image_raw" + ("/compressed" if c else "") for name, c in zip(names, compressed)]
    node.update({"cameras.names": names, "cameras.topics": topics, "cameras.compressed": compressed,
                 "command_rate_hz": float(args.command_rate), "model.preset": args.preset,
                 "model.num_threads": int(args.num_threads), "status_log_period_s": 10.0})
    robot.update({"cameras.topics": list(topics), "cameras.compressed": list(compressed), "camera.width": args.width,
                  "camera.height": args.height, "camera.rate_hz": float(args.camera_rate), "camera.encoding": "rgb8",
                  "joint_states.rate_hz": float(args.joint_rate)})
    return {"/**/turbopi_node": {"ros__parameters": node}, "/**/fake_robot": {"ros__parameters": robot}}


# --- processes --------------------------------------------------------------------------------------------------------
class Process:
    """A node as a subprocess with its output in a log file; RSS and CPU time from /proc."""

    def __init__(self, module: str, params_file: Path, log_path: Path, env: Dict[str, str]):
        self.name = module.rsplit(".", 1)[-1]
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--ros-args", "--params-file", str(params_file)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def memory_mb(self) -> Dict[str, float]:
        return read_memory_mb(self.proc.pid)

    def cpu_s(self) -> Optional[float]:
        return read_cpu_s(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def read_memory_mb(pid) -> Dict[str, float]:
    """VmRSS and its parts RssAnon (heap: what a leak grows) and RssShmem (shared memory: DDS segments mapped) of
    /proc/<pid>/status in MiB; {} once the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssShmem"):
                    out[key] = int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return out


def read_cpu_s(pid) -> Optional[float]:
    """User + system CPU seconds of /proc/<pid>/stat, all threads (fields 14 and 15; the name may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def read_machine_cpu() -> tuple:
    """(busy, total) jiffies of all CPUs from /proc/stat: how loaded the machine is, other processes included."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class LogScan:
    """Counts error and crash lines in a growing log file, reading only what is new."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.errors, self.crashes = 0, 0
        self.first_lines: List[str] = []  # the first few error / crash lines, for the report

    def update(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only
        self.offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            crash = any(m in line for m in CRASH_MARKS)
            error = any(m in line for m in ERROR_MARKS)
            self.crashes += crash
            self.errors += error
            if (crash or error) and len(self.first_lines) < 20:
                self.first_lines.append(line[:300])


# --- the monitor ------------------------------------------------------------------------------------------------------
class Monitor:
    """Subscribes to the node's outputs; times are wall-clock nanoseconds (the rmw timestamps are on that clock)."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.node = rclpy.create_node("turbopi_soak_monitor")
        self.lock = threading.Lock()
        self.commands: List[tuple] = []  # (received_ns, source_ns)
        self.chunks: List[tuple] = []  # (received_ns, header stamp ns)
        self.status: Dict[str, str] = {}
        self.level, self.message = -1, ""
        deep = QoSProfile(depth=200)  # reliable, deep: no command is lost while this process is busy
        self.node.create_subscription(Float64MultiArray, processes.COMMAND_TOPIC, self._on_command, deep)
        self.node.create_subscription(JointTrajectory, processes.CHUNK_TOPIC, self._on_chunk, deep)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_command(self, msg, info) -> None:
        with self.lock:
            self.commands.append((info["received_timestamp"], info["source_timestamp"]))

    def _on_chunk(self, msg, info) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.chunks.append((info["received_timestamp"], stamp))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == STATUS_NAME:
                level = status.level[0] if isinstance(status.level, (bytes, bytearray)) else int(status.level)
                with self.lock:
                    self.status = {kv.key: kv.value for kv in status.values}
                    self.level, self.message = level, status.message

    def counts(self) -> tuple:
        with self.lock:
            return len(self.commands), len(self.chunks), dict(self.status), self.level, self.message


# --- the run ----------------------------------------------------------------------------------------------------------
def sample(t: float, procs: Dict[str, Process], cpu_before: Dict[str, Optional[float]], machine_before: tuple,
           dt: float, monitor: Monitor, counted: Dict[str, int], logs: Dict[str, LogScan]) -> dict:
    """One row of the time series: what happened in the last ``dt`` seconds (1 unless this process was held up)."""
    row: dict = {"t": round(t, 3), "dt": round(dt, 3)}
    for name, proc in procs.items():
        cpu = proc.cpu_s()
        memory = proc.memory_mb()
        row[f"{name}_rss_mb"] = memory.get("VmRSS")
        row[f"{name}_anon_mb"], row[f"{name}_shmem_mb"] = memory.get("RssAnon"), memory.get("RssShmem")
        before = cpu_before.get(name)
        row[f"{name}_cpu_pct"] = None if cpu is None or before is None else 100.0 * (cpu - before) / dt
        cpu_before[name] = cpu
    own = read_cpu_s(os.getpid())
    row["monitor_cpu_pct"] = 100.0 * (own - cpu_before.get("monitor", own)) / dt
    cpu_before["monitor"] = own
    busy, total = read_machine_cpu()
    row["machine_cpu_pct"] = 100.0 * os.cpu_count() * (busy - machine_before[0]) / max(1, total - machine_before[1])
    machine_before[:] = [busy, total]
    row["loadavg_1m"] = float(open("/proc/loadavg").read().split()[0])
    n_commands, n_chunks, status, level, message = monitor.counts()
    row["commands"], row["chunks"] = n_commands - counted["commands"], n_chunks - counted["chunks"]
    counted.update(commands=n_commands, chunks=n_chunks)
    row["diag"] = {k: _number(v) for k, v in status.items() if k.endswith(("_ms", "_s", "_hz")) or k in
                   ("errors", "chunks")}
    row["diag_level"], row["diag_message"] = level, message
    for name, scan in logs.items():
        scan.update()
        row[f"{name}_error_lines"], row[f"{name}_crash_lines"] = scan.errors, scan.crashes
    return row


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def run(args, out: Path) -> dict:
    """Both nodes started under the load, watched for --duration seconds (or until one exits or SIGINT/SIGTERM),
    then stopped. -> everything report.json is built from."""
    params, params_file, env, injector = _prepare(args, out)
    ros = processes.BackgroundExecutor(name="soak_monitor")
    monitor = Monitor()
    ros.add(monitor.node)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM too ends the run and stops both nodes
    procs = {"node": Process("turbopi_ros.node", params_file, out / "turbopi_node.log", env),
             "robot": Process("turbopi_ros.tools.fake_robot", params_file, out / "fake_robot.log", env)}
    logs = {name: LogScan(p.log_path) for name, p in procs.items()}
    print(f"turbopi-soak: {args.duration:g} s{' (short)' if args.short else ''}, ROS_DOMAIN_ID="
          f"{os.environ['ROS_DOMAIN_ID']}, load: {load_text(args)}; output in {out}", flush=True)
    rows: List[dict] = []
    interrupted = False
    start_wall_ns = time.time_ns()
    try:
        _watch(args, procs, monitor, logs, injector, rows)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        end_wall_ns = time.time_ns()
        codes = {name: p.stop() for name, p in procs.items()}
        signal.signal(signal.SIGTERM, previous_term)
        for scan in logs.values():
            scan.update()
        ros.shutdown()
    with monitor.lock:
        commands, chunks = list(monitor.commands), list(monitor.chunks)
    return {"args": vars(args), "params": params, "cores": os.cpu_count(),
            "start_wall_ns": start_wall_ns, "end_wall_ns": end_wall_ns,
            "faults": injector.windows if injector else [],
            "rows": rows, "commands": commands, "chunks": chunks, "exit_codes": codes, "interrupted": interrupted,
            "log_lines": {name: scan.first_lines for name, scan in logs.items()},
            "crash_lines": {name: scan.crashes for name, scan in logs.items()},
            "error_lines": {name: scan.errors for name, scan in logs.items()}}


def _prepare(args, out: Path):
    """The output folder, the parameter file, this process's ROS environment (a private domain, localhost only) and
    the nodes' (with the fault file when --fault-every asks for one). -> (params, their file, env, injector or
    None)."""
    out.mkdir(parents=True, exist_ok=True)
    params = soak_params(args)
    params_file = out / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    os.environ["ROS_DOMAIN_ID"] = str(args.domain if args.domain is not None else random.randint(150, 230))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if args.dds_profile:  # for this process too: the same transports everywhere
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(Path(args.dds_profile).resolve())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    injector = (FaultInjector(out / "faults.json", args.fault_every, args.fault_s, end_s=args.duration)
                if args.fault_every > 0 else None)
    if injector:  # test-only fault injection (turbopi_ros/faults.py): the node reads this file before each inference
        env[faults.ENV] = str(injector.path)
    return params, params_file, env, injector


def _watch(args, procs: Dict[str, Process], monitor: Monitor, logs: Dict[str, LogScan],
           injector: Optional["FaultInjector"], rows: List[dict]) -> None:
    """One sample a second into rows (and the fault injector stepped) until --duration is over or a node exits."""
    cpu_before: Dict[str, Optional[float]] = {}
    machine_before = list(read_machine_cpu())
    counted = {"commands": 0, "chunks": 0}
    t0 = time.monotonic()
    next_tick, last = t0 + 1.0, t0
    while True:
        time.sleep(max(0.0, next_tick - time.monotonic()))
        now = time.monotonic()
        row = sample(now - t0, procs, cpu_before, machine_before, now - last, monitor, counted, logs)
        last = now
        rows.append(row)
        if injector:
            injector.step(now - t0)
        next_tick = max(next_tick + 1.0, now + 0.5)  # held up: no burst of catch-up samples
        if int(row["t"]) % args.print_every == 0:
            print(progress_line(row), flush=True)
        dead = [name for name, p in procs.items() if not p.alive()]
        if dead:
            print(f"turbopi-soak: {dead} exited early", flush=True)
            return
        if now - t0 >= args.duration:
            return


class FaultInjector:
    """Every ``every_s`` seconds (the first after one period), an inference failure for ``fault_s`` seconds, through
    the node's test-only fault file; none that would not end, and leave RECOVERY_S to recover, before ``end_s``.
    ``windows``: [(start_ns, end_ns)] wall-clock, for the report."""

    RECOVERY_S = 5.0  # the report's check: commands back within 5 s of a failure's end

    def __init__(self, path: Path, every_s: float, fault_s: float, end_s: float = float("inf")):
        self.path, self.every_s, self.fault_s, self.end_s = path, float(every_s), float(fault_s), float(end_s)
        self.path.write_text("")
        self.windows: List[List[int]] = []
        self._on_since: Optional[float] = None

    def step(self, t: float) -> None:
        if (self._on_since is None and t >= self.every_s * (len(self.windows) + 1)
                and t + self.fault_s + self.RECOVERY_S <= self.end_s):
            self.path.write_text(json.dumps({"raise": f"soak: injected engine failure #{len(self.windows) + 1}"}))
            self.windows.append([time.time_ns(), 0])
            self._on_since = t
        elif self._on_since is not None and t - self._on_since >= self.fault_s - 0.5:  # the loop ticks at 1 Hz
            self.path.write_text("")
            self.windows[-1][1] = time.time_ns()
            self._on_since = None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def load_text(args) -> str:
    jpeg = f", {args.jpeg} of them JPEG" if args.jpeg else ""
    return (f"{args.cameras} camera(s) {args.width}x{args.height} rgb8 at {args.camera_rate:g} Hz{jpeg}, joint states "
            f"at {args.joint_rate:g} Hz, commands at {args.command_rate:g} Hz, preset {args.preset}, DDS profile "
            f"{args.dds_profile or '(Fast DDS defaults)'}")


def progress_line(row: dict) -> str:
    total = row["diag"].get("total_ms")
    total = f"{total:.0f}" if isinstance(total, float) else "-"
    return (f"[{row['t']:6.0f} s] chunks {row['chunks']:3d}/s  commands {row['commands']:3d}/s  total {total} ms  node "
            f"RSS {row['node_rss_mb'] or 0:.0f} MiB CPU {row['node_cpu_pct'] or 0:.0f} %  robot CPU "
            f"{row['robot_cpu_pct'] or 0:.0f} %  machine {row['machine_cpu_pct']:.0f} %  | {row['diag_message']}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="turbopi-soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=None, help="seconds (default 600; 60 with --short)")
    p.add_argument("--short", action="store_true", help="CI mode: 60 s, relaxed thresholds")
    p.add_argument("--out", default="soak_out", help="directory for report.json, the plots and both logs")
    p.add_argument("--cameras", type=int, default=3, help="cameras (model slots base, left wrist, right wrist)")
    p.add_argument("--jpeg", type=int, default=1, help="how many of the cameras publish JPEG CompressedImage")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--camera-rate", type=float, default=30.0, help="frames per second per camera")
    p.add_argument("--joint-rate", type=float, default=500.0, help="joint states per second")
    p.add_argument("--command-rate", type=float, default=50.0, help="the node's command_rate_hz (0 = follow the "
                                                                     "joint states)")
    p.add_argument("--preset", default="tiny", help="model.preset of the random-weight model")
    p.add_argument("--num-threads", type=int, default=1, help="the node's model.num_threads")
    p.add_argument("--fault-every", type=float, default=0.0,
                   help="seconds between injected inference failures (test-only hook TURBOPI_TEST_FAULTS; 0 = none): "
                        "each lasts --fault-s, the report checks that the commands stopped and came back")
    p.add_argument("--fault-s", type=float, default=2.0, help="how long each injected failure lasts")
    p.add_argument("--dds-profile", default=None,
                   help="Fast DDS XML profile for all processes (default: config/fastdds_large_data.xml, whose 32 MB "
                        "shared-memory segment carries raw frames over 512 KB; '' = Fast DDS's defaults, which lose "
                        "most of them best-effort)")
    p.add_argument("--domain", type=int, default=None, help="ROS_DOMAIN_ID (default: random in 150-230)")
    p.add_argument("--print-every", type=int, default=10, help="seconds between progress lines")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 60.0 if args.short else 600.0
    if args.dds_profile is None:
        args.dds_profile = str(config_file("fastdds_large_data.xml"))
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not ros_compat.callbacks_get_message_info():
        print(f"turbopi-soak: rclpy {ros_compat.rclpy_version()} ({ros_compat.ros_distro()}) gives subscription "
              "callbacks no message info, and the soak times every command and chunk by its rmw reception and source "
              "timestamps: run it on Jazzy or Kilted (rclpy 3.4 or newer)", file=sys.stderr, flush=True)
        return 2
    out = Path(args.out)
    raw = run(args, out)
    report = soak_report.analyse(raw, short=args.short)
    report["command"] = " ".join(["turbopi-soak"] + argv)
    report["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    report["commit"] = _git_commit()
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    soak_report.plot(raw, report, out)
    text = soak_report.summary(report)
    (out / "summary.txt").write_text(f"$ {report['command']}   ({report['date']}, commit {report['commit']})\n{text}\n")
    print(text, flush=True)
    return 0 if report["passed"] else 1


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
