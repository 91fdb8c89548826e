"""Pure PyTorch pi0 / pi0.5: SigLIP, Gemma, the prefix cache and the maskless denoise. No ROS here."""
from .torch_version import check as _check_torch

_check_torch()  # before any module of the model is imported: an old torch fails here with one clear line
