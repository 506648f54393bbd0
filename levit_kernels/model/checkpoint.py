"""Load LeViT weights in timm's naming or the original release's, at any resolution.

The original release (facebookresearch/LeViT) names layers by position in one flat
`blocks` list (`blocks.4.kv.c.weight`, `blocks.0.m.qkv.c.weight`, `head.l.weight`, ...) and
stores the bias index tables as persistent buffers; timm nests them by stage. Keys are
translated structurally from the model's config -- never by zipping key orders -- so a wrong
or missing key is reported by name. Attention-bias tables trained at another resolution are
resized by interpolating each head's (|dy|, |dx|) offset map.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .config import get_config
from .levit import LeViT

StateDict = Mapping[str, torch.Tensor]
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _original_to_timm_prefixes(model) -> Dict[str, str]:
    """Map each original-release module prefix to the timm-style prefix of our model."""
    cfg = model.config
    prefixes: Dict[str, str] = {}

    def linear_bn(orig: str, ours: str):
        prefixes[orig + ".c"] = ours + ".linear"
        prefixes[orig + ".bn"] = ours + ".bn"

    for i, orig in enumerate(("0", "2", "4", "6")):
        linear_bn(f"patch_embed.{orig}", f"stem.conv{i + 1}")

    def mlp(orig: str, ours: str):
        linear_bn(f"{orig}.m.0", f"{ours}.ln1")
        linear_bn(f"{orig}.m.2", f"{ours}.ln2")

    idx = 0
    for stage, depth in enumerate(cfg.depth):
        if stage > 0:                       # shrinking attention, then its residual MLP
            ours = f"stages.{stage}.downsample"
            linear_bn(f"blocks.{idx}.kv", f"{ours}.attn_downsample.kv")
            linear_bn(f"blocks.{idx}.q.1", f"{ours}.attn_downsample.q.ln")
            linear_bn(f"blocks.{idx}.proj.1", f"{ours}.attn_downsample.proj.ln")
            prefixes[f"blocks.{idx}"] = f"{ours}.attn_downsample"
            mlp(f"blocks.{idx + 1}", f"{ours}.mlp")
            idx += 2
        for block in range(depth):
            ours = f"stages.{stage}.blocks.{block}"
            linear_bn(f"blocks.{idx}.m.qkv", f"{ours}.attn.qkv")
            linear_bn(f"blocks.{idx}.m.proj.1", f"{ours}.attn.proj.ln")
            prefixes[f"blocks.{idx}.m"] = f"{ours}.attn"
            mlp(f"blocks.{idx + 1}", f"{ours}.mlp")
            idx += 2
    for head in ("head", "head_dist"):
        prefixes[f"{head}.bn"] = f"{head}.bn"
        prefixes[f"{head}.l"] = f"{head}.linear"
    return prefixes


def is_original_naming(state_dict: StateDict) -> bool:
    return any(k.startswith(("patch_embed.", "blocks.")) for k in state_dict)


def convert_original(state_dict: StateDict, model) -> Dict[str, torch.Tensor]:
    """Rename an original-release state dict to our (timm) names; unknown keys are errors."""
    prefixes = _original_to_timm_prefixes(model)
    out, unknown = {}, []
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "attention_bias_idxs" and prefix in prefixes:
            continue                        # recomputed from the resolution, never loaded
        ok = prefix in prefixes and (leaf in _BN_LEAVES or leaf == "attention_biases")
        if not ok:
            unknown.append(key)
            continue
        out[f"{prefixes[prefix]}.{leaf}"] = value
    if unknown:
        raise KeyError(f"checkpoint has keys that {model.config.name} (original-release naming) "
                       f"does not: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
    return out


def _offset_grid(n: int, target: Tuple[int, int]) -> Tuple[int, int]:
    """Guess the (rows, cols) grid of a bias table of n entries, preferring target's aspect."""
    side = math.isqrt(n)
    if side * side == n:
        return (side, side)
    for rows in range(1, n + 1):
        if n % rows == 0 and rows / (n // rows) >= target[0] / target[1]:
            return (rows, n // rows)
    raise ValueError(f"cannot infer the grid of an attention-bias table with {n} entries")


def resize_attention_biases(table: torch.Tensor, k_res: Tuple[int, int]) -> torch.Tensor:
    """(H, n_old) bias table -> (H, rows*cols): bicubic over each head's offset map.

    Entry dy * cols + dx holds the bias for offset (|dy|, |dx|); align_corners keeps offset 0
    and the largest offset where they are, so the zero-offset (self) bias is kept exactly.
    """
    heads, n_old = table.shape
    grid = _offset_grid(n_old, k_res)
    maps = table.detach().float().reshape(1, heads, *grid)
    resized = F.interpolate(maps, size=k_res, mode="bicubic", align_corners=True)
    return resized.reshape(heads, k_res[0] * k_res[1]).to(table.dtype)


def read_checkpoint(path: Union[str, os.PathLike]):
    """The object a checkpoint file holds (`.safetensors` or anything torch.save wrote, read
    with weights_only): a state dict, or one wrapped with other entries (`class_names`, ...)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(checkpoint) -> Dict[str, torch.Tensor]:
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_checkpoint(checkpoint)
    for wrapper in ("model", "state_dict", "model_ema"):
        if isinstance(checkpoint, Mapping) and wrapper in checkpoint \
                and isinstance(checkpoint[wrapper], Mapping):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a state dict or a path to one, got "
                        f"{type(checkpoint).__name__}")
    return dict(checkpoint)


def class_names(checkpoint) -> Optional[List[str]]:
    """The class names a checkpoint carries beside its weights (a `class_names` or `classes`
    list of strings at its top level, as training scripts save them), else None."""
    if not isinstance(checkpoint, Mapping):
        return None
    for key in ("class_names", "classes"):
        names = checkpoint.get(key)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def head_config(state: StateDict) -> Dict[str, object]:
    """`num_classes` and `distillation` of the classifier heads in a state dict (either
    naming), so that a checkpoint fine-tuned on another label set builds the model it fits;
    empty when the state dict has no classifier."""
    for head in ("head.linear.weight", "head.l.weight"):
        if head in state:
            return {"num_classes": state[head].shape[0],
                    "distillation": any(k.startswith("head_dist.") for k in state)}
    return {}


def load_checkpoint(model, checkpoint: Union[str, os.PathLike, StateDict]):
    """Load timm- or original-named weights into `model` strictly, resizing bias tables.

    Returns the model. A key the model lacks, or one it needs that the checkpoint lacks, is an
    error that names the key.
    """
    state = _unwrap(checkpoint)
    if is_original_naming(state):
        state = convert_original(state, model)
    state = {k: v for k, v in state.items() if not k.endswith("attention_bias_idxs")}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match {model.config.name}: "
                       f"missing {missing[:10]}, unexpected {unexpected[:10]}")
    for key, value in state.items():
        if key.endswith("attention_biases") and value.shape != own[key].shape:
            if value.ndim != 2 or value.shape[0] != own[key].shape[0]:
                raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} cannot be resized "
                                 f"to {tuple(own[key].shape)} (head count differs)")
            module = model.get_submodule(key.rpartition(".")[0])
            state[key] = resize_attention_biases(value, module.key_resolution)
    model.load_state_dict(state, strict=True)
    return model


def create_model(name: str = "LeViT-256", checkpoint=None, **kwargs):
    """Build `LeViT(name, **kwargs)` (`fused=True` among them gives a FusedLeViT) and, if
    given, load `checkpoint` into it. Unless given, `num_classes` and `distillation` are the
    checkpoint's (head_config)."""
    if checkpoint is None:
        return LeViT(get_config(name), **kwargs)
    state = _unwrap(checkpoint)
    model = LeViT(get_config(name), **{**head_config(state), **kwargs})
    return load_checkpoint(model, state)
