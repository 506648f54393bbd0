"""The model layer: LeViT as the paper describes it, and its fused twin. Uses levit_kernels.ops.

    config.py      the variants (Table 3) and ablations (Appendix A.2)
    levit.py       LeViT, plain PyTorch with timm's parameter names; knows no kernels
    checkpoint.py  timm / original-release state dicts at any resolution, create_model
    plan.py        LeViT folded for inference and the backends that run it on the ops
    state_key.py   what a plan depends on, recorded and checked again on every call
    fused.py       FusedLeViT: owns its plan, the plan's key and every hook that renews it
    frozen.py      freeze(): a plan alone, built once, for serving (edits do not reach it)
"""
from .checkpoint import create_model, load_checkpoint
from .config import VARIANTS, LeViTConfig, get_config, multiply_adds
from .frozen import FrozenLeViT, freeze
from .fused import FusedLeViT
from .levit import LeViT

__all__ = ["LeViT", "FusedLeViT", "FrozenLeViT", "LeViTConfig", "VARIANTS", "create_model",
           "freeze", "get_config", "load_checkpoint", "multiply_adds"]
