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

from .config import VARIANTS, ImageSize, get_config, to_2tuple
from .levit import AttentionBias, LeViT

StateDict = Mapping[str, torch.Tensor]
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_METADATA = ("class_names", "classes")       # lists of names a checkpoint may carry


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


def resize_attention_biases(table: torch.Tensor, old_grid: Tuple[int, int],
                            new_grid: Tuple[int, int]) -> torch.Tensor:
    """(H, rows*cols) bias table laid out on `old_grid` -> (H, rows'*cols') on `new_grid`:
    bicubic over each head's offset map.

    Entry dy * cols + dx holds the bias for offset (|dy|, |dx|); align_corners keeps offset 0
    and the largest offset where they are, so the zero-offset (self) bias is kept exactly.
    """
    heads = table.shape[0]
    maps = table.detach().float().reshape(1, heads, *old_grid)
    resized = F.interpolate(maps, size=tuple(new_grid), mode="bicubic", align_corners=True)
    return resized.reshape(heads, new_grid[0] * new_grid[1]).to(table.dtype)


def _grids(model) -> Dict[str, Tuple[int, int]]:
    """The (rows, cols) offset grid of each of `model`'s attention-bias tables, by key."""
    return {f"{name}.attention_biases": module.key_resolution
            for name, module in model.named_modules() if isinstance(module, AttentionBias)}


def _bias_grids(model, img_size) -> Dict[str, Tuple[int, int]]:
    """_grids of `model`'s architecture at another `img_size` (a twin built on the meta
    device: shapes only, no memory)."""
    with torch.device("meta"):
        return _grids(LeViT(model.config, num_classes=0, distillation=False, img_size=img_size))


def _checkpoint_grids(tables: Dict[str, torch.Tensor], own: Dict[str, Tuple[int, int]], model,
                      checkpoint_img_size) -> Dict[str, Tuple[int, int]]:
    """The offset grid each of the checkpoint's bias `tables` was trained on (`own`: the
    model's grids, _grids).

    A table holds rows*cols entries, which do not say rows and cols: 280 entries are a 14x20
    grid (224x320 images) or a 20x14 one (320x224), and the two need different resizing. So
    the grids come from `checkpoint_img_size` (the image size the checkpoint was trained at);
    without it, from the model's own grids where every table already fits them, else from a
    square image whose first-stage grid holds the first table's entries -- checked against
    every table, and refused (asking for checkpoint_img_size) where one does not fit."""
    if checkpoint_img_size is not None:
        size = to_2tuple(checkpoint_img_size, "checkpoint_img_size")
        grids, source = _bias_grids(model, size), f"checkpoint_img_size={size}"
    elif all(t.shape[-1] == own[k][0] * own[k][1] for k, t in tables.items()):
        return {key: own[key] for key in tables}     # trained at this size (or its transpose)
    else:
        first = next(iter(own))                      # the first stage's grid comes first
        side = max(1, math.isqrt(tables[first].shape[-1]))
        grids, source = _bias_grids(model, 16 * side), f"a square {16 * side}-pixel image"
    for key, table in tables.items():
        rows, cols = grids[key]
        if table.shape[-1] != rows * cols:
            hint = ("" if checkpoint_img_size is not None else
                    ": the checkpoint was trained at another (likely non-square) image size; "
                    "pass checkpoint_img_size=(height, width), the size it was trained at")
            raise ValueError(f"{key}: the checkpoint's table has {table.shape[-1]} entries per "
                             f"head, not the {rows}x{cols} grid of {source}{hint}")
    return {key: grids[key] for key in tables}


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
    # Class names may sit beside the weights (class_names() reads them); nothing else that is
    # not a named tensor belongs in a state dict.
    state = {k: v for k, v in checkpoint.items()
             if k not in _METADATA or class_names({k: v}) is None}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"checkpoint: key {key!r} is {type(key).__name__}, not str; "
                            f"expected a state dict of names to tensors")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint: entry {key!r} is {type(value).__name__}, not a "
                            f"tensor; expected a state dict of names to tensors")
    return state


def class_names(checkpoint) -> Optional[List[str]]:
    """The class names a checkpoint carries beside its weights (a `class_names` or `classes`
    list of strings at its top level, as training scripts save them), else None."""
    if not isinstance(checkpoint, Mapping):
        return None
    for key in _METADATA:
        names = checkpoint.get(key)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def head_config(state: StateDict) -> Dict[str, object]:
    """`num_classes` and `distillation` of the classifier heads in a state dict (either
    naming), so that a checkpoint fine-tuned on another label set builds the model it fits;
    `num_classes` 0 (pooled features out) when it has no classifier, as timm's
    `num_classes=0` models save."""
    for head in ("head.linear.weight", "head.l.weight"):
        if head in state:
            weight = state[head]
            if weight.ndim != 2:
                raise ValueError(f"{head}: expected a 2-D (classes, features) weight, got shape "
                                 f"{tuple(weight.shape)}")
            return {"num_classes": weight.shape[0],
                    "distillation": any(k.startswith("head_dist.") for k in state)}
    if any(k.startswith(("head.", "head_dist.")) for k in state):
        return {}           # a head without its weight: load_checkpoint names what is missing
    return {"num_classes": 0}


def load_checkpoint(model, checkpoint: Union[str, os.PathLike, StateDict],
                    checkpoint_img_size: Optional[ImageSize] = None):
    """Load timm- or original-named weights into `model` strictly, resizing bias tables.

    Returns the model. A key the model lacks, or one it needs that the checkpoint lacks, is an
    error that names the key (and the variant whose weights the checkpoint holds, if one
    does). Bias tables trained at another image size are resized to the model's grids;
    `checkpoint_img_size` says which size that was (needed where it was not square: the
    tables alone cannot tell 224x320 from 320x224).
    """
    original = _unwrap(checkpoint)
    try:
        _load(model, original, checkpoint_img_size)
    except (KeyError, ValueError, RuntimeError) as exc:
        hint = _variant_hint(original, model.config.name)
        if not hint or type(exc) not in (KeyError, ValueError, RuntimeError):
            raise
        message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
        raise type(exc)(message + hint) from exc
    return model


def _load(model, state: Dict[str, torch.Tensor], checkpoint_img_size) -> None:
    if is_original_naming(state):
        state = convert_original(state, model)
    state = {k: v for k, v in state.items() if not k.endswith("attention_bias_idxs")}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match {model.config.name}: "
                       f"missing {missing[:10]}, unexpected {unexpected[:10]}")
    # timm's levit_conv_* models hold the same layers as 1x1 convolutions: (N, K, 1, 1).
    state = {k: v.flatten(1) if v.ndim == 4 and v.shape[2:] == (1, 1) and own[k].ndim == 2
             else v for k, v in state.items()}
    tables = {k: v for k, v in state.items() if k.endswith("attention_biases")}
    for key, value in tables.items():
        if value.ndim != 2 or value.shape[0] != own[key].shape[0] or value.shape[1] == 0:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} cannot be resized "
                             f"to {tuple(own[key].shape)}: expected {own[key].shape[0]} "
                             f"heads of >= 1 entries")
    if tables:
        new_grids = _grids(model)
        old_grids = _checkpoint_grids(tables, new_grids, model, checkpoint_img_size)
        for key, value in tables.items():
            if old_grids[key] != new_grids[key]:
                state[key] = resize_attention_biases(value, old_grids[key], new_grids[key])
    model.load_state_dict(state, strict=True)


def _variant_hint(state: Dict[str, torch.Tensor], tried: str) -> str:
    """'; its weights are LeViT-128's' where the names and shapes of `state` (bias tables,
    which depend on the image size, aside) are those of one other variant; else ''."""
    try:
        heads = head_config(state)
    except ValueError:
        return ""
    for name, config in VARIANTS.items():
        if name == tried:
            continue
        with torch.device("meta"):
            twin = LeViT(config, **heads)
        try:
            named = convert_original(state, twin) if is_original_naming(state) else state
        except KeyError:
            continue
        if _shapes(named) == _shapes(twin.state_dict()):
            return f"; its weights are {name}'s: build that variant"
    return ""


def _shapes(state) -> Dict[str, Tuple[int, ...]]:
    """Shapes by key, 1x1 convolutions (timm's levit_conv_*) as the linears they are."""
    return {k: tuple(v.shape[:2] if v.ndim == 4 and v.shape[2:] == (1, 1) else v.shape)
            for k, v in state.items()
            if not k.endswith(("attention_biases", "attention_bias_idxs"))}


def create_model(name: str = "LeViT-256", checkpoint=None,
                 checkpoint_img_size: Optional[ImageSize] = None, **kwargs):
    """Build `LeViT(name, **kwargs)` (`fused=True` among them gives a FusedLeViT) and, if
    given, load `checkpoint` into it (load_checkpoint; `checkpoint_img_size` is the size it
    was trained at, needed only where that was not square). Unless given, `num_classes` and
    `distillation` are the checkpoint's (head_config)."""
    if checkpoint is None:
        return LeViT(get_config(name), **kwargs)
    state = _unwrap(checkpoint)
    model = LeViT(get_config(name), **{**head_config(state), **kwargs})
    return load_checkpoint(model, state, checkpoint_img_size)
