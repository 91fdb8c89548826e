"""The oldest torch this package runs on, checked as the model package is imported (model/__init__.py): an older one
stops with one line that names it and what to install, not with an error from deep inside torch.

Why 2.5: the fused layer ops are ``torch.library.custom_op``s defined in modules with ``from __future__ import
annotations``, and torch 2.4's schema inference rejects string annotations ("Parameter x has unsupported type
torch.Tensor"). The whole suite ran on torch 2.5.1 (CPU): 733 passed; what failed needs a newer Triton or torch:
the Triton interpreter checks, turbopi-kernel-targets, FP8 on a CPU (README.md, "torch and Triton versions").
"""
from __future__ import annotations

import re
from typing import Tuple

import torch

MIN_TORCH = (2, 5)


def parse(version: str) -> Tuple[int, int]:
    """(major, minor) of a torch version string: "2.5.0a0+872d972e41.nv24.08" (a Jetson wheel) -> (2, 5)."""
    m = re.match(r"\s*(\d+)\.(\d+)", version)
    if m is None:
        raise ValueError(f"not a torch version: {version!r}")
    return int(m.group(1)), int(m.group(2))


def check(version: str = torch.__version__, where: str = torch.__file__) -> None:
    """Raise ImportError naming ``version`` and what to install when it is older than MIN_TORCH."""
    if parse(version) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ImportError(f"turbopi_ros needs torch {need} or newer; this Python has torch {version} ({where}): "
                          f"install torch {need}+ (on a Jetson, NVIDIA's torch wheel for your JetPack)")
