"""turbopi-bench-preprocess: what the node pays to turn camera messages into model inputs, serial vs parallel, exact vs
fast, measured side by side in one run.

    turbopi-bench-preprocess --cameras 3 --width 640 --height 480 --iters 30
    python -m turbopi_ros.tools.bench_preprocess --threads 2,3 --json prep.json

Prints (a) the machine, with its load average before and after; (b) Policy.preprocess on 3 (--cameras) camera
messages, the conversion included (each camera a ``lambda: image_to_rgb(msg)`` as the node passes it), for raw bgr8
Images and JPEG CompressedImages, exact (openpi's pixels) and fast, serially and on the camera thread pool (--threads:
one parallel variant per count given): median and p90 over --iters iterations, every variant once per iteration in a
rotating order, with the process's CPU time (above the wall time: parallel work; below: waiting for a busy core);
(c) parity from the same run: the parallel inputs bit-identical to the serial ones, the exact ones bit-identical to
openpi's resize_with_pad + image_to_model; (d) where one camera's time goes (conversion, resize, float conversion),
with numpy's strided channel reversal for comparison; (e) fast vs exact: the pixel difference and the
action difference on the --preset model (random weights) with the same noise, next to the action difference that JPEG
compression itself causes; (f) frames prepared as they arrive (the node's default): one frame's preparation, and
the observation taken from prepared frames (parity in (c)). Frames are synthetic scenes (smooth shading, textures,
hard-edged shapes), not photos.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
import torch
from PIL import Image

from ..ros.conversions import compressed_to_rgb, image_to_rgb, rgb_to_compressed, rgb_to_image
from ..model.checkpoint import random_model
from ..model.config import load_config
from ..policy.policy import IMAGE_KEYS, Observation, Policy
from ..policy.preprocess import fast_resize_to_fit
from ..policy.tokenizer import ByteTokenizer
from ..policy.transforms import fit_size, image_to_model, resize_to_fit, resize_with_pad

# CPU features Pillow's and OpenCV's pixel loops use (x86 and Arm)
IMAGE_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "asimd", "neon", "sve")


def machine() -> Dict[str, object]:
    import PIL

    info = {"cpu": _cpuinfo("model name") or _cpuinfo("Model") or "unknown", "cpu_count": os.cpu_count(),
            "cpu_flags": [f for f in IMAGE_FLAGS if f in (_cpuinfo("flags") or _cpuinfo("Features") or "").split()],
            "numpy": np.__version__, "pillow": PIL.__version__, "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(), "python": sys.version.split()[0]}
    return info


def _cpuinfo(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":")[0].strip() == key), "")
    except OSError:
        return ""


def load_avg() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic camera-like frame: smooth shading at several scales, fine texture and hard-edged shapes."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 110.0, dtype=np.float32)
    for scale, amplitude in ((64, 60.0), (16, 25.0), (4, 8.0)):
        coarse = rng.normal(0, amplitude, (height // scale + 2, width // scale + 2, 3)).astype(np.float32)
        img += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        colour = [float(c) for c in rng.integers(0, 256, 3)]
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(max(2, min(height, width) // 40), max(3, min(height, width) // 5)))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + 2 * size, y + size), colour, -1)
        else:
            cv2.circle(img, (x, y), size, colour, -1)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def timed(fns: Dict[str, Callable[[], object]], warmup: int, iters: int) -> Dict[str, List[Tuple[float, float]]]:
    """Every function once per iteration, in an order that rotates, so drifts of a shared machine hit all alike.
    -> name: [(wall seconds, this process's CPU seconds, all threads)]. CPU / wall above 1 is parallel work; a CPU
    time well below the wall time means the process waited for a core (other work on the machine)."""
    names, times = list(fns), {n: [] for n in fns}
    for i in range(warmup + iters):
        for name in names[i % len(names):] + names[: i % len(names)]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            t1, c1 = time.perf_counter(), time.process_time()
            if i >= warmup:
                times[name].append((t1 - t0, c1 - c0))
    return times


def summary(times: List[Tuple[float, float]]) -> Dict[str, float]:
    wall = sorted(t for t, _ in times)
    p90 = wall[min(len(wall) - 1, int(round(0.9 * (len(wall) - 1))))]
    return {"median_ms": statistics.median(wall) * 1e3, "p90_ms": p90 * 1e3,
            "cpu_median_ms": statistics.median(c for _, c in times) * 1e3, "n": len(wall)}


def observation(messages: Dict[str, object], policy: Policy, compressed: bool) -> Observation:
    """As the node builds it: each camera a callable converting its message on the policy's camera threads."""
    reduce_for = policy.reduced_decode_size
    if compressed:
        images = {k: (lambda m=m, k=k: compressed_to_rgb(m, k, reduce_for=reduce_for)) for k, m in messages.items()}
    else:
        images = {k: (lambda m=m, k=k: image_to_rgb(m, k)) for k, m in messages.items()}
    return Observation(images=images, state=np.array([0.1, -0.2, 0.3]), prompt="pick up the cup", stamp=1.0)


def same_inputs(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a[:5], b[:5])) and np.array_equal(a[5], b[5])


def run(args) -> Dict[str, object]:
    """Every table of one run (the JSON's content; report() prints it)."""
    return PreprocessBench(args)()


class PreprocessBench:
    """One run: synthetic frames as raw and JPEG messages, a policy per preprocess mode and thread count, and an
    observation per source for each; the tables measured on them."""

    def __init__(self, args):
        self.args = args
        self.cams = cams = IMAGE_KEYS[: args.cameras]
        self.h, self.w = h, w = args.height, args.width
        frames = {k: scene(h, w, seed=i) for i, k in enumerate(cams)}
        self.raw = raw = {k: rgb_to_image(f, "bgr8") for k, f in frames.items()}
        self.jpeg = jpeg = {k: rgb_to_compressed(f, "jpeg", quality=args.quality) for k, f in frames.items()}
        self.model = model = random_model(load_config(args.preset), seed=args.seed)
        self.tok = tok = ByteTokenizer(model.config.vlm.vocab_size, model.config.max_token_len)
        self.s = model.config.vision.image_size
        counts = [int(t) for t in str(args.threads).split(",")]
        self.ways = {"serial": 1, **{("parallel" if len(counts) == 1 else f"parallel x{t}"): t or None
                                     for t in counts}}
        self.policies = {(mode, way): Policy(model, tokenizer=tok, preprocess_mode=mode, seed=args.seed,
                                             preprocess_threads=threads)
                         for mode in ("exact", "fast") for way, threads in self.ways.items()}
        self.parallel_ways = [way for way in self.ways if way != "serial"]
        self.obs = {(src, mode, way): observation(raw if src == "raw" else jpeg, p, src == "jpeg")
                    for (mode, way), p in self.policies.items() for src in ("raw", "jpeg")}

    def __call__(self) -> Dict[str, object]:
        args = self.args
        result: Dict[str, object] = {"machine": machine(), "load_avg_before": load_avg(), "setup": self.setup()}
        result["preprocess"] = self.preprocess_table()
        outputs = {key: self.policies[key[1:]].preprocess(self.obs[key]) for key in self.obs}
        result["parity"] = parity = self.parity(outputs)
        result["one_camera"] = self.one_camera()
        result["on_arrival"] = self.on_arrival(outputs, parity)
        if not args.no_actions:
            result["fast_vs_exact"] = fast_vs_exact(args, self.model, self.tok, self.cams, self.h, self.w)
        result["load_avg_after"] = load_avg()
        return result

    def setup(self) -> Dict[str, object]:
        args = self.args
        return {"cameras": len(self.cams), "width": self.w, "height": self.h, "jpeg_quality": args.quality,
                "jpeg_kb": [round(len(m.data) / 1024, 1) for m in self.jpeg.values()],
                "model_image_size": self.s,
                "threads": {way: self.policies["exact", way].cameras.threads for way in self.ways},
                "iters": args.iters, "warmup": args.warmup}

    def preprocess_table(self) -> Dict[str, Dict[str, float]]:
        """(b) Policy.preprocess, conversion included: every source, mode and thread count interleaved."""
        keys = [(src, mode, way) for src in ("raw", "jpeg") for mode in ("exact", "fast") for way in self.ways]
        fns = {" ".join(key): (lambda key=key: self.policies[key[1:]].preprocess(self.obs[key])) for key in keys}
        table = {name: summary(t) for name, t in timed(fns, self.args.warmup, self.args.iters).items()}
        for src in ("raw", "jpeg"):
            for mode in ("exact", "fast"):
                for way in self.parallel_ways:
                    row = table[f"{src} {mode} {way}"]
                    row["speedup_vs_serial"] = table[f"{src} {mode} serial"]["median_ms"] / row["median_ms"]
        return table

    def parity(self, outputs) -> Dict[str, bool]:
        """(c) from this run's code paths: parallel == serial, and exact == openpi's resize_with_pad +
        image_to_model."""
        s, cams = self.s, self.cams
        parity = {f"{src} {mode}: {way} == serial": same_inputs(outputs[src, mode, way], outputs[src, mode, "serial"])
                  for src in ("raw", "jpeg") for mode in ("exact", "fast") for way in self.parallel_ways}
        for src, msgs in (("raw", self.raw), ("jpeg", self.jpeg)):
            rgbs = [image_to_rgb(m, k) if src == "raw" else compressed_to_rgb(m, k) for k, m in msgs.items()]
            openpi = np.stack([image_to_model(resize_with_pad(im, s, s)) for im in rgbs])
            got = outputs[src, "exact", self.parallel_ways[0]][0][0, : len(cams)].permute(0, 2, 3, 1).numpy()
            parity[f"{src} exact: == openpi resize_with_pad + image_to_model"] = bool(np.array_equal(got, openpi))
        return parity

    def one_camera(self) -> Dict[str, Dict[str, float]]:
        """(d) one camera, stage by stage."""
        s, h, k0, raw, jpeg = self.s, self.h, self.cams[0], self.raw, self.jpeg
        bgr = np.frombuffer(raw[k0].data, np.uint8).reshape(h, self.w, 3)
        rgb = image_to_rgb(raw[k0], k0)
        fitted = resize_to_fit(rgb, s, s)
        fitted_pil = Image.fromarray(fitted)
        pil = Image.fromarray(rgb)
        new_h, new_w = fitted.shape[:2]
        first_pass_done = pil.resize((new_w, h), resample=Image.BILINEAR)
        reduce_for = self.policies["fast", "serial"].reduced_decode_size
        stage_fns = {"bgr8 -> rgb: numpy bgr[:, :, ::-1].copy() (before)": lambda: bgr[:, :, ::-1].copy(),
                     "bgr8 -> rgb: image_to_rgb (cv2.cvtColor)": lambda: image_to_rgb(raw[k0], k0),
                     "jpeg -> rgb: compressed_to_rgb, full size": lambda: compressed_to_rgb(jpeg[k0], k0),
                     "jpeg -> rgb: compressed_to_rgb, reduced (fast)":
                         lambda: compressed_to_rgb(jpeg[k0], k0, reduce_for=reduce_for),
                     "resize exact: Pillow bilinear (resize_to_fit)": lambda: resize_to_fit(rgb, s, s),
                     "  of which: array -> Pillow image (unpack)": lambda: Image.fromarray(rgb),
                     "  of which: horizontal pass": lambda: pil.resize((new_w, h), resample=Image.BILINEAR),
                     "  of which: vertical pass": lambda: first_pass_done.resize((new_w, new_h),
                                                                                 resample=Image.BILINEAR),
                     "  of which: Pillow image -> array (pack)": lambda: np.asarray(fitted_pil),
                     "resize fast: box + bilinear (fast_resize_to_fit)": lambda: fast_resize_to_fit(rgb, s, s),
                     "uint8 -> [-1, 1]: image_to_model": lambda: image_to_model(fitted)}
        return {n: summary(t) for n, t in timed(stage_fns, self.args.warmup, self.args.iters).items()}

    def on_arrival(self, outputs, parity: Dict[str, bool]) -> Dict[str, Dict[str, float]]:
        """(f) frames prepared as they arrive (the node's cameras.prepare_on_arrival): each frame on its own, then the
        observation taken from the prepared frames (a copy: what lies between taking the inputs and the engine).
        Their parity with the serial preprocess goes into (c)."""
        policies, k0 = self.policies, self.cams[0]
        arrival_fns = {}
        for src in ("raw", "jpeg"):
            sources = self.obs[src, "exact", "serial"].images
            ready = {k: policies["exact", "serial"].prepare_image(k, sources[k]) for k in self.cams}
            taken = Observation(images=ready, state=np.array([0.1, -0.2, 0.3]), prompt="pick up the cup", stamp=1.0)
            arrival_fns[f"{src}: one frame as it arrives"] = (
                lambda k=k0, source=sources[k0]: policies["exact", "serial"].prepare_image(k, source))
            for way in self.ways:
                arrival_fns[f"{src}: observation taken, {way}"] = (
                    lambda way=way, taken=taken: policies["exact", way].preprocess(taken))
                parity[f"{src} exact: frames prepared on arrival, taken {way} == preprocess serial"] = same_inputs(
                    policies["exact", way].preprocess(taken), outputs[src, "exact", "serial"])
        return {n: summary(t) for n, t in timed(arrival_fns, self.args.warmup, self.args.iters).items()}


def fast_vs_exact(args, model, tok, cams, h, w) -> Dict[str, object]:
    """Over --observations scenes: pixel difference (uint8 levels, inside the image, padding excluded) and action
    difference with the same noise, fast vs exact, raw and JPEG; for scale, exact raw vs exact JPEG (what JPEG
    compression itself changes)."""
    exact = Policy(model, tokenizer=tok, preprocess_mode="exact", seed=args.seed)
    fast = Policy(model, tokenizer=tok, preprocess_mode="fast", seed=args.seed)
    pixel = {"raw": [], "jpeg": []}
    actions = {"raw": [], "jpeg": [], "jpeg vs raw (exact)": []}
    scale = []
    s = model.config.vision.image_size
    new_h, new_w = fit_size(h, w, s, s)
    top, left = (s - new_h) // 2, (s - new_w) // 2
    for n in range(args.observations):
        frames = {k: scene(h, w, seed=100 + 10 * n + i) for i, k in enumerate(cams)}
        msgs = {"raw": {k: rgb_to_image(f, "bgr8") for k, f in frames.items()},
                "jpeg": {k: rgb_to_compressed(f, "jpeg", quality=args.quality) for k, f in frames.items()}}
        out = {}
        for src in ("raw", "jpeg"):
            for name, policy in (("exact", exact), ("fast", fast)):
                policy.generator.manual_seed(args.seed + n)  # the same noise for every variant of observation n
                prepared = policy.prepare(observation(msgs[src], policy, src == "jpeg"))
                out[src, name] = (prepared.inputs[0], policy.run(prepared).actions)
            a, b = (np.rint((out[src, m][0][0, : len(cams)].numpy() + 1) * 127.5) for m in ("exact", "fast"))
            pixel[src].append(np.abs(a - b)[:, :, top:top + new_h, left:left + new_w].ravel())  # padding left out
            actions[src].append(np.abs(out[src, "exact"][1] - out[src, "fast"][1]).max())
        actions["jpeg vs raw (exact)"].append(np.abs(out["raw", "exact"][1] - out["jpeg", "exact"][1]).max())
        scale.append(np.abs(out["raw", "exact"][1]).max())
    res: Dict[str, object] = {"observations": args.observations, "max_abs_action": float(max(scale))}
    for src, diffs in pixel.items():
        d = np.concatenate(diffs)
        res[f"pixels {src}"] = {"max_levels": float(d.max()), "mean_levels": float(d.mean()),
                                "share_over_8_levels": float(np.mean(d > 8))}
    for name, diffs in actions.items():
        res[f"actions {name}"] = {"max_abs_diff": float(max(diffs))}
    return res


def report(r: Dict[str, object]) -> None:
    m = r["machine"]
    print(f"machine: {m['cpu']}, {m['cpu_count']} cores, flags {' '.join(m['cpu_flags'])}; numpy {m['numpy']}, "
          f"Pillow {m['pillow']}, OpenCV {m['opencv']} ({m['opencv_threads']} threads), python {m['python']}")
    print(f"load average (1, 5, 15 min): before {r['load_avg_before']}, after {r['load_avg_after']}")
    st = r["setup"]
    print(f"\n(b) Policy.preprocess, conversion included: {st['cameras']} cameras {st['width']}x{st['height']} -> "
          f"{st['model_image_size']}, raw = bgr8 Image, jpeg = CompressedImage q{st['jpeg_quality']} "
          f"({', '.join(map(str, st['jpeg_kb']))} KiB); threads {st['threads']}; {st['iters']} iterations")
    print(f"  {'variant':<27}{'median ms':>10}{'p90 ms':>9}{'cpu ms':>9}{'speedup':>9}")
    for name, row in r["preprocess"].items():
        speedup = f"{row['speedup_vs_serial']:.2f}x" if "speedup_vs_serial" in row else ""
        print(f"  {name:<27}{row['median_ms']:>10.2f}{row['p90_ms']:>9.2f}{row['cpu_median_ms']:>9.2f}{speedup:>9}")
    print("  (cpu ms: this process's CPU time, all threads; below the wall time = waiting for a busy core)")
    print("\n(c) parity (this run)")
    for name, ok in r["parity"].items():
        print(f"  {'OK  ' if ok else 'FAIL'} {name}")
    print("\n(d) one camera, by stage")
    for name, row in r["one_camera"].items():
        print(f"  {name:<52}{row['median_ms']:>8.3f} ms (p90 {row['p90_ms']:.3f})")
    if "fast_vs_exact" in r:
        f = r["fast_vs_exact"]
        print(f"\n(e) fast vs exact over {f['observations']} observations (actions: same noise; largest |action| "
              f"{f['max_abs_action']:.3f})")
        for name, row in f.items():
            if name.startswith("pixels"):
                print(f"  {name:<28} max {row['max_levels']:.0f} levels, mean {row['mean_levels']:.2f}, "
                      f"{100 * row['share_over_8_levels']:.2f}% over 8 levels")
            elif name.startswith("actions"):
                print(f"  {name:<28} max |diff| {row['max_abs_diff']:.2e}")
    print("\n(f) frames prepared as they arrive (the node's cameras.prepare_on_arrival), exact: one frame, its "
          "conversion included, and the observation taken from the prepared frames")
    for name, row in r["on_arrival"].items():
        print(f"  {name:<52}{row['median_ms']:>8.3f} ms (p90 {row['p90_ms']:.3f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="turbopi-bench-preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=3, choices=(1, 2, 3))
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", default="0",
                   help="the parallel variant's threads, or several (2,3: one variant each); 0: the policy's default "
                        "(one per camera, at most one per usable core)")
    p.add_argument("--preset", default="tiny", help="model for the action differences (random weights)")
    p.add_argument("--observations", type=int, default=4, help="scenes for the fast vs exact differences")
    p.add_argument("--no-actions", action="store_true", help="skip (e) fast vs exact")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write all results to this file")
    args = p.parse_args(argv)
    if args.iters < 1 or args.width < 1 or args.height < 1 or args.observations < 1:
        p.error("--iters, --width, --height and --observations must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        p.error(f"--json {args.json}: its folder does not exist")
    try:
        load_config(args.preset)
    except ValueError as e:
        p.error(f"--preset: {e}")
    if not all(t.strip().isdigit() for t in str(args.threads).split(",")):
        p.error(f"--threads: expected a number or numbers separated by commas (2,3), got '{args.threads}'")
    result = run(args)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if all(result["parity"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
