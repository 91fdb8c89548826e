"""Camera images -> the model's image batch, the cameras of one observation side by side on a small thread pool.

Each camera is converted (when its source is a callable: the node passes ``lambda: image_to_rgb(msg, name)``),
resized to fit the model's square image and written as floats in [-1, 1] straight into its slot of one preallocated
batch, padding already -1 (openpi's padding zeros, converted). The work is Pillow's resize and OpenCV's decoding and
colour conversion, which release the GIL, so threads run it in parallel; the calling thread works too rather than wait.

Parallel, the exact resize runs in smaller tasks so that 3 cameras also spread evenly over 2 cores: Pillow's bilinear
resize is two passes, horizontal and vertical, and in the first one each row (horizontal pass) or column (vertical)
is computed on its own. So the image is cut in bands along that axis, each band's first pass is a separate task, and
the second pass runs on the bands put back together: the same passes with the same coefficients, hence the same pixels.
Pillow chooses the order of the passes itself (Pillow 13 runs the vertical one first for some tall images), so
``first_pass`` finds it once per geometry by comparing both banded orders with the plain call on a noise image; a
geometry neither reproduces is resized by the plain call. Each camera writes only its own slot: the batch needs no lock.

OpenCV's own thread pool is set to one thread (process-wide, cv2.setNumThreads(1)): on these small images it saves
nothing (a 640x480 cvtColor takes 0.05 ms either way), but its workers spin about 0.3 ms after every call, burning the
core that another camera, or the model running beside a pipelined preprocess, needs.

Modes:
    exact  openpi's resize_with_pad (Pillow bilinear) and image_to_model: the pixels openpi computes (the default)
    fast   a box reduction by the largest integer factor r in (2, 4, 8) that does not take the image below its fitted
           size (``reduction_factor``; OpenCV INTER_AREA, exact 2x2 / 4x4 / 8x8 means, a JPEG decoder does it for
           free while decoding: conversions.compressed_to_rgb(..., reduce_for=Policy.reduced_decode_size)), then
           OpenCV bilinear to the fitted size (a factor below 2, where bilinear sampling still touches every pixel).
           Rows and columns beyond a multiple of r (at most r - 1 at the bottom and right) are dropped. Not openpi's
           pixels: docs/preprocessing.md gives the pixel and action differences.
"""
from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .transforms import fit_size, image_to_model, resize_to_fit

MODES = ("exact", "fast")


class ModelImage:
    """One camera's image already preprocessed for a CameraBatch (CameraBatch.model_image): resized, padded and scaled
    into float32 [size, size, 3] in [-1, 1]. The batch copies it into its slot as it is: an observation's cameras can
    be prepared one by one as their frames arrive (the node's frames.FramePreparer) and give the same model inputs."""

    __slots__ = ("pixels",)

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels


# a camera's image: uint8 [H, W, 3] RGB or a ModelImage, or a zero-argument callable that returns one (run on a pool
# thread)
ImageSource = Union[np.ndarray, ModelImage, Callable[[], Union[np.ndarray, ModelImage]]]
BAND_ROWS = 64  # no band of a first pass is cut thinner


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ObservationError(ValueError):
    """An observation the policy will not act on; the message says what is wrong and what was expected."""


def reduction_factor(cur_h: int, cur_w: int, height: int, width: int) -> int:
    """Fast mode: the largest r in (8, 4, 2) by which a cur_h x cur_w image can be shrunk and still be downscaled (not
    upscaled) to its fit in height x width; 1 when none can. A JPEG decoder reduces by such a factor while decoding."""
    ratio = max(cur_w / width, cur_h / height)
    return next((r for r in (8, 4, 2) if r <= ratio), 1)


def fast_resize_to_fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [new_h, new_w, 3]: box reduction by ``reduction_factor``, then bilinear to the fitted
    size (OpenCV). About eight times faster than Pillow's bilinear on a 640x480 camera; not bit-exact with openpi."""
    import cv2

    if image.strides[2] != 1 or image.strides[1] != 3:  # OpenCV takes strided rows, not strided pixels
        image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    r = reduction_factor(h, w, height, width)
    while r > 1 and min(h, w) < r:  # a side shorter than r holds no whole block (a 4 x 2000 image): reduce less
        r //= 2
    if r > 1:  # whole r x r blocks: OpenCV's INTER_AREA takes its fast integer path only then
        image = cv2.resize(image[: h - h % r, : w - w % r], (w // r, h // r), interpolation=cv2.INTER_AREA)
    new_h, new_w = fit_size(image.shape[0], image.shape[1], height, width)
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return image


class _Tasks:
    """The small tasks of one batch, drained by the calling thread and the pool's; a task may add tasks. Exceptions are
    kept by camera slot; drain() returns once every task has finished."""

    def __init__(self):
        self._cond = threading.Condition()
        self._todo: collections.deque = collections.deque()
        self._open = 0
        self.errors: Dict[int, Exception] = {}

    def add(self, slot: int, fn, *args) -> None:
        with self._cond:
            self._todo.append((slot, fn, args))
            self._open += 1
            self._cond.notify()

    def drain(self) -> None:
        while True:
            with self._cond:
                while not self._todo and self._open:
                    self._cond.wait()
                if not self._todo:
                    return
                slot, fn, args = self._todo.popleft()
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - raised by CameraBatch.__call__, the first failing slot's
                self.errors.setdefault(slot, e)
            finally:
                with self._cond:
                    self._open -= 1
                    if not self._open:
                        self._cond.notify_all()


class _BandedResize:
    """One camera's exact resize in parallel pieces: the first pass over bands (rows when Pillow runs the horizontal
    pass first, columns when it runs the vertical one first), then the second pass over the whole."""

    def __init__(self, image: np.ndarray, new_h: int, new_w: int, bands: int, first: str):
        self.image, self.new_h, self.new_w, self.first = image, new_h, new_w, first
        h, w = image.shape[:2]
        length = h if first == "horizontal" else w
        self.cuts = [length * b // bands for b in range(bands + 1)]
        self.parts: List[object] = [None] * bands
        self.left = bands
        self.lock = threading.Lock()

    def first_pass(self, band: int) -> bool:
        """One band's first pass; True for the band that completes the set."""
        from PIL import Image

        a, b = self.cuts[band], self.cuts[band + 1]
        if self.first == "horizontal":
            part = Image.fromarray(self.image[a:b]).resize((self.new_w, b - a), resample=Image.BILINEAR)
        else:
            part = Image.fromarray(self.image[:, a:b]).resize((b - a, self.new_h), resample=Image.BILINEAR)
        with self.lock:
            self.parts[band] = part
            self.left -= 1
            return self.left == 0

    def second_pass(self) -> np.ndarray:
        from PIL import Image

        h, w = self.image.shape[:2]
        horizontal = self.first == "horizontal"
        whole = Image.new("RGB", (self.new_w, h) if horizontal else (w, self.new_h))
        for a, part in zip(self.cuts, self.parts):
            whole.paste(part, (0, a) if horizontal else (a, 0))
        return np.asarray(whole.resize((self.new_w, self.new_h), resample=Image.BILINEAR))


_FIRST_PASS: Dict[Tuple[int, int, int, int], Optional[str]] = {}


def first_pass(h: int, w: int, new_h: int, new_w: int) -> Optional[str]:
    """"horizontal" or "vertical": the pass Pillow's bilinear resize of h x w to new_h x new_w runs first, found by
    resizing a noise image (whose rounding tells the orders apart) plainly and banded both ways; None if neither banded
    order gives the plain call's pixels. Once per geometry (a few plain resizes of that size)."""
    key = (h, w, new_h, new_w)
    if key not in _FIRST_PASS:
        from PIL import Image

        noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        plain = np.asarray(Image.fromarray(noise).resize((new_w, new_h), resample=Image.BILINEAR))  # resize_to_fit's
        _FIRST_PASS[key] = None
        for order in ("horizontal", "vertical"):
            banded = _BandedResize(noise, new_h, new_w, 2, order)
            banded.first_pass(0), banded.first_pass(1)
            if np.array_equal(banded.second_pass(), plain):
                _FIRST_PASS[key] = order
                break
    return _FIRST_PASS[key]


class CameraBatch:
    """Builds the model's image batch from the cameras of one observation; one instance per policy, reused.

    slots: the model's camera slots in order; size: the model's square image size; threads: threads working at once,
    the calling thread included (default: one per slot, at most one per usable core: 3 threads on 2 cores measured
    slower than 2; 1 = serially in the calling thread, the plain calls)."""

    def __init__(self, slots: Sequence[str], size: int, mode: str = "exact", threads: Optional[int] = None):
        if mode not in MODES:
            raise ValueError(f"preprocess mode '{mode}' is not one of {list(MODES)}")
        self.slots, self.size, self.mode = tuple(slots), int(size), mode
        self.threads = min(len(self.slots), usable_cpus()) if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"preprocess threads must be at least 1, got {threads}")
        self._resize = resize_to_fit if mode == "exact" else fast_resize_to_fit
        self._pool: Optional[ThreadPoolExecutor] = None  # made on first use: a serial or one-camera policy has none
        self._pool_lock = threading.Lock()
        import cv2

        cv2.setNumThreads(1)  # see the module docstring

    @property
    def reduced_decode_size(self) -> Optional[Tuple[int, int]]:
        """(height, width) the images are fit into when a decoder may reduce them first (fast mode), else None."""
        return (self.size, self.size) if self.mode == "fast" else None

    def __call__(self, images: Mapping[str, ImageSource]) -> Tuple[np.ndarray, np.ndarray]:
        """-> (float32 [slots, size, size, 3] in [-1, 1], bool [slots] present). A slot missing from ``images`` (or
        None) is an absent camera: all -1, mask False. A bad image, or an error raised by a source, propagates as the
        serial loop would raise it: the first failing camera in slot order, the same exception."""
        s = self.size
        batch = np.full((len(self.slots), s, s, 3), -1.0, dtype=np.float32)
        jobs = [(i, key, images[key]) for i, key in enumerate(self.slots) if images.get(key) is not None]
        masks = np.zeros(len(self.slots), dtype=bool)
        masks[[i for i, _, _ in jobs]] = True
        if self.threads == 1 or all(isinstance(source, ModelImage) for _, _, source in jobs):  # (copies: serially)
            for i, key, source in jobs:
                self._fill(batch[i], key, source)
            return batch, masks
        tasks = _Tasks()
        for i, key, source in jobs:
            tasks.add(i, self._start, tasks, batch, i, key, source)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="turbopi-camera")
            helping = [self._pool.submit(tasks.drain) for _ in range(self.threads - 1)]
        tasks.drain()
        for future in helping:
            future.result()  # every task done, failed or not, before returning or raising
        if tasks.errors:
            raise tasks.errors[min(tasks.errors)]
        return batch, masks

    def model_image(self, key: str, source: ImageSource) -> ModelImage:
        """One camera's image on its own (convert, resize, pad, scale) in the calling thread: the pixels its slot of a
        batch would hold."""
        pixels = np.full((self.size, self.size, 3), -1.0, dtype=np.float32)
        self._fill(pixels, key, source)
        return ModelImage(pixels)

    def _fill(self, slot: np.ndarray, key: str, source: ImageSource) -> None:
        """A camera's slot from its source, serially: the plain calls."""
        image = self._image(key, source)
        if isinstance(image, ModelImage):
            slot[...] = image.pixels
        else:
            self._write(slot, self._resize(image, self.size, self.size))

    def _start(self, tasks: _Tasks, batch: np.ndarray, i: int, key: str, source: ImageSource) -> None:
        """A camera's first task: convert; then resize and write, or (exact, large enough) queue its bands."""
        image = self._image(key, source)
        if isinstance(image, ModelImage):
            batch[i] = image.pixels
            return
        h, w = image.shape[:2]
        new_h, new_w = fit_size(h, w, self.size, self.size)
        first = None
        if self.mode == "exact" and (new_h, new_w) != (h, w) and min(h, w) >= 2 * BAND_ROWS:
            first = first_pass(h, w, new_h, new_w)
        bands = min(self.threads, (h if first == "horizontal" else w) // BAND_ROWS)
        if first is None or bands < 2:
            self._write(batch[i], self._resize(image, self.size, self.size))
            return
        resize = _BandedResize(image, new_h, new_w, bands, first)
        for band in range(bands):
            tasks.add(i, self._first_pass, tasks, batch, i, resize, band)

    def _first_pass(self, tasks: _Tasks, batch: np.ndarray, i: int, resize: _BandedResize, band: int) -> None:
        if resize.first_pass(band):
            tasks.add(i, self._second_pass, batch, i, resize)

    def _second_pass(self, batch: np.ndarray, i: int, resize: _BandedResize) -> None:
        self._write(batch[i], resize.second_pass())

    def _image(self, key: str, source: ImageSource) -> Union[np.ndarray, ModelImage]:
        image = source() if callable(source) else source
        if isinstance(image, ModelImage):
            shape = (self.size, self.size, 3)
            if image.pixels.dtype != np.float32 or image.pixels.shape != shape:
                raise ObservationError(f"camera '{key}': a preprocessed image must be float32 {list(shape)}, got "
                                       f"{image.pixels.dtype} {list(image.pixels.shape)}")
            return image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ObservationError(f"camera '{key}': expected uint8 [H, W, 3] RGB, got {got}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ObservationError(f"camera '{key}': empty image {list(image.shape)}")
        return image

    def _write(self, slot: np.ndarray, resized: np.ndarray) -> None:
        """uint8 [new_h, new_w, 3] -> floats in the middle of ``slot`` (the padding is already -1)."""
        new_h, new_w = resized.shape[:2]
        top, left = (self.size - new_h) // 2, (self.size - new_w) // 2
        image_to_model(resized, out=slot[top:top + new_h, left:left + new_w])

    def close(self) -> None:
        """Stop the pool's threads (idle ones also end when the policy is garbage collected)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
