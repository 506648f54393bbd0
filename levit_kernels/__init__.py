"""levit_kernels: fused CPU (C++/AVX2/AVX-512) and GPU (Triton) kernels for LeViT inference.

    model = levit_kernels.LeViT("LeViT-256", fused=True).eval()

Importing this package never touches CUDA and never requires the compiled extension: without
it the plain PyTorch path still runs (see `levit_kernels.info()`).
"""
from . import ops, reference
from .checkpoint import create_model, load_checkpoint
from .config import VARIANTS, LeViTConfig, get_config, multiply_adds
from .info import info
from .model import LeViT

__version__ = "0.1.0"
__all__ = ["LeViT", "LeViTConfig", "VARIANTS", "create_model", "get_config", "info",
           "load_checkpoint", "multiply_adds", "ops", "reference"]
