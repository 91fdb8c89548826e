"""Camera images -> the model's image batch, the cameras of one observation side by side on a small thread pool.

Each camera is converted (when its source is a callable: the node passes ``lambda: image_to_rgb(msg, name)``),
resized to fit the model's square image and written as floats in [-1, 1] straight into its slot of one preallocated
batch, padding already -1 (openpi's padding zeros, converted). The work is Pillow's resize and OpenCV's decoding and
colour conversion, which release the GIL, so threads run the cameras in parallel; the calling thread takes the first
camera itself rather than wait idle. Each camera writes only its own slot, so the batch needs no lock, and the results
are the serial ones bit for bit (the same functions on the same inputs).

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

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .transforms import fit_size, image_to_model, resize_to_fit

MODES = ("exact", "fast")
# a camera's image: uint8 [H, W, 3] RGB, or a zero-argument callable that returns one (run on a pool thread)
ImageSource = Union[np.ndarray, Callable[[], np.ndarray]]


class ObservationError(ValueError):
    """An observation the policy will not act on; the message says what is wrong and what was expected."""


def reduction_factor(cur_h: int, cur_w: int, height: int, width: int) -> int:
    """Fast mode: the largest r in (8, 4, 2) by which a cur_h x cur_w image can be shrunk and still be downscaled (not
    upscaled) to its fit in height x width; 1 when none can. A JPEG decoder reduces by such a factor while decoding."""
    ratio = max(cur_w / width, cur_h / height)
    return next((r for r in (8, 4, 2) if r <= ratio), 1)


def fast_resize_to_fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [new_h, new_w, 3]: box reduction by ``reduction_factor``, then bilinear to the fitted
    size (OpenCV). About ten times faster than Pillow's bilinear on a 640x480 camera; not bit-exact with openpi."""
    import cv2

    if image.strides[2] != 1 or image.strides[1] != 3:  # OpenCV takes strided rows, not strided pixels
        image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    r = reduction_factor(h, w, height, width)
    if r > 1:  # whole r x r blocks: OpenCV's INTER_AREA takes its fast integer path only then
        image = cv2.resize(image[: h - h % r, : w - w % r], (w // r, h // r), interpolation=cv2.INTER_AREA)
    new_h, new_w = fit_size(image.shape[0], image.shape[1], height, width)
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return image


class CameraBatch:
    """Builds the model's image batch from the cameras of one observation; one instance per policy, reused.

    slots: the model's camera slots in order; size: the model's square image size; threads: cameras processed at once,
    the calling thread included (default: one per slot; 1 = serially in the calling thread)."""

    def __init__(self, slots: Sequence[str], size: int, mode: str = "exact", threads: Optional[int] = None):
        if mode not in MODES:
            raise ValueError(f"preprocess mode '{mode}' is not one of {list(MODES)}")
        self.slots, self.size, self.mode = tuple(slots), int(size), mode
        self.threads = len(self.slots) if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"preprocess threads must be at least 1, got {threads}")
        self._resize = resize_to_fit if mode == "exact" else fast_resize_to_fit
        self._pool: Optional[ThreadPoolExecutor] = None  # made on first use: a serial or one-camera policy has none
        self._pool_lock = threading.Lock()

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
        helpers = min(self.threads, len(jobs)) - 1
        if helpers <= 0:
            for i, key, source in jobs:
                self._fill(batch[i], key, source)
            return batch, masks
        todo: "queue.SimpleQueue" = queue.SimpleQueue()
        for job in jobs:
            todo.put(job)
        errors: Dict[int, Exception] = {}
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="turbopi-camera")
        helping = [self._pool.submit(self._drain, batch, todo, errors) for _ in range(helpers)]
        self._drain(batch, todo, errors)  # the calling thread takes cameras too
        for future in helping:
            future.result()  # every camera done, failed or not, before returning or raising
        if errors:
            raise errors[min(errors)]
        return batch, masks

    def _drain(self, batch: np.ndarray, todo: "queue.SimpleQueue", errors: Dict[int, Exception]) -> None:
        """Take cameras off ``todo`` until it is empty; a camera's exception is kept under its slot, not raised."""
        while True:
            try:
                i, key, source = todo.get_nowait()
            except queue.Empty:
                return
            try:
                self._fill(batch[i], key, source)
            except Exception as e:  # noqa: BLE001 - re-raised by __call__, the first in slot order
                errors[i] = e

    def _fill(self, slot: np.ndarray, key: str, source: ImageSource) -> None:
        image = source() if callable(source) else source
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ObservationError(f"camera '{key}': expected uint8 [H, W, 3] RGB, got {got}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ObservationError(f"camera '{key}': empty image {list(image.shape)}")
        resized = self._resize(image, self.size, self.size)
        new_h, new_w = resized.shape[:2]
        top, left = (self.size - new_h) // 2, (self.size - new_w) // 2
        image_to_model(resized, out=slot[top:top + new_h, left:left + new_w])

    def close(self) -> None:
        """Stop the pool's threads (idle ones also end when the policy is garbage collected)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
