"""freeze(model): an inference snapshot of a LeViT, for serving.

`LeViT(fused=True)` is a drop-in module: every call first checks that its plan (folded and
packed weights) is still the model's (state_key.py), since the weights, the structure or a
hook may have changed since the last call. At batch 1 that check is most of the ~1 ms a call
spends outside the kernels: the forward streams its weights through the caches, so the
check's ~1200 Python objects are read cold every time (benchmarks/README.md, "Batch 1").

A `FrozenLeViT` is what ONNX Runtime's session or OpenVINO's compiled model is: the plan
built once from the model as it is, with no reference back to it. A call checks the images
and runs the plan, nothing else. Edits to the model after freezing (new weights, hooks, a
train() step) do not reach it, by contract: freeze again to take them. It computes the
eval-mode forward in the dtype it was frozen in (autocast does not apply, as to the peers'
models), on the model's device, and only values: tracing, gradients and torch.func
transforms are refused, naming what to use instead.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Optional

import torch
from torch import Tensor
from torch.library import custom_op

from ..ops import cpu
from .fused import FusedLeViT, _backend, _kernels_cannot_see, _module_name, kernel_dtypes
from .levit import LeViT, check_images
from .plan import KERNELS, FusedPlan, UnsupportedModel


class FrozenLeViT:
    """A LeViT's eval-mode forward on the fused kernels, frozen when built (module docstring).

    Call it with (B, C, H, W) images on its device, in its dtype or float32; it returns the
    logits (B, classes) in its dtype (the pooled features where the model has no head).
    Attributes: `device`, `dtype`, `img_size`, `variant`, `out_features`."""

    def __init__(self, model: LeViT, dtype: Optional[torch.dtype] = None):
        if not isinstance(model, LeViT):
            raise TypeError(f"model: expected a levit_kernels LeViT, got {type(model).__name__}")
        if model.training:
            raise ValueError("model: freeze() snapshots the eval-mode forward; call "
                             "model.eval() first")
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("model: it has no parameters to freeze")
        device = first.device
        dtype = first.dtype if dtype is None else dtype
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype: expected a torch.dtype, got {type(dtype).__name__}")
        # A fused model's kernel choice (use_kernels) is frozen with it.
        kernels = (model._kernels_for(device) if isinstance(model, FusedLeViT)
                   else KERNELS.get(device.type, ""))
        if not kernels:
            raise ValueError(f"model: its parameters are on {device}; the fused kernels run on "
                             f"{' and '.join(KERNELS)} tensors")
        dtypes = kernel_dtypes(kernels, device)
        if dtype not in dtypes:
            raise TypeError(f"dtype: the fused kernels on {device.type} take "
                            f"{', '.join(str(d) for d in dtypes)}, got {dtype}")
        if kernels == "cpu" and not cpu.is_available():
            raise RuntimeError(f"freeze: {cpu.unavailable_reason()}")
        plan = _current_plan(model, device, dtype, kernels)
        if plan is None:
            try:
                with torch.no_grad():
                    plan = FusedPlan(model, device, dtype, kernels)
            except UnsupportedModel as exc:
                raise ValueError(f"model: the fused kernels cannot run it: "
                                 f"{_module_name(model, exc.module)} {exc.problem}; call the "
                                 f"model itself, which runs its plain layers") from None
        self._plan = plan
        self.device, self.dtype, self.img_size = device, dtype, tuple(model.img_size)
        self.variant = model.config.name
        self.out_features = (self._plan.head.out_features if self._plan.head is not None
                             else model.config.embed_dim[-1])
        self._id = next(_ids)       # never reused, unlike id(self)
        _LIVE[self._id] = self

    def __call__(self, images: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError("FrozenLeViT: torch.jit.trace cannot record its fused forward; "
                               "trace the model, or torch.export it")
        check_images(images, self.img_size)
        if images.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("images: they require grad, but FrozenLeViT computes no "
                               "gradients; call the model itself (its plain layers "
                               "differentiate)")
        if images.device != self.device:
            raise ValueError(f"images: expected device {self.device} (the frozen model's), got "
                             f"{images.device}")
        if images.dtype not in (self.dtype, torch.float32):
            wanted = {self.dtype, torch.float32}
            raise TypeError(f"images: expected {' or '.join(sorted(map(str, wanted)))}, got "
                            f"{images.dtype}")
        if torch.compiler.is_compiling():
            # One opaque op in the graph (fullgraph=True traces it), instead of a graph break
            # at the C++ call.
            return torch.ops.levit.frozen_forward(images, self._id)
        if torch._C._are_functorch_transforms_active() or _kernels_cannot_see(images):
            raise RuntimeError("FrozenLeViT runs plain tensors through its kernels only; under "
                               "torch.func transforms, tensor subclasses, dispatch modes or "
                               "forward AD call the model itself")
        return self._run(images)

    def _run(self, images: Tensor) -> Tensor:
        plan = self._plan
        with torch.no_grad():
            return _backend(plan).run(plan, images)

    def __reduce__(self):
        # The plan's C++ program holds raw pointers into this process's tensors.
        raise TypeError("FrozenLeViT cannot be pickled or copied: save the model's state "
                        "dict and freeze it again where it is loaded")

    def __repr__(self) -> str:
        return (f"FrozenLeViT({self.variant}, {self.device}, {self.dtype}, "
                f"img_size={self.img_size})")


def _current_plan(model: LeViT, device, dtype, kernels) -> Optional[FusedPlan]:
    """A fused model's plan for this device, dtype and kernel family if it has one that is
    still the model's: shared rather than built again (a plan never changes once built; the
    model replaces it when the model changes), so freezing costs no second copy of the
    weights."""
    plan = model._matching_plan() if isinstance(model, FusedLeViT) else None
    if (isinstance(plan, FusedPlan) and (plan.key.device, plan.key.dtype, plan.kernels)
            == (device, dtype, kernels)):
        return plan
    return None


def freeze(model: LeViT, dtype: Optional[torch.dtype] = None) -> FrozenLeViT:
    """An inference snapshot of `model` (eval mode) on its device, in `dtype` (default: the
    model's; a float32 model frozen in torch.bfloat16 folds in float32, then rounds once).
    See FrozenLeViT: later edits to the model do not reach it."""
    return FrozenLeViT(model, dtype)


# Live frozen models by number: how a compiled graph's op finds its snapshot (a graph can
# carry an int, not an object).
_LIVE: "weakref.WeakValueDictionary[int, FrozenLeViT]" = weakref.WeakValueDictionary()
_ids = itertools.count(1)


@custom_op("levit::frozen_forward", mutates_args=(), device_types=("cpu", "cuda"))
def _frozen_forward(images: Tensor, frozen_id: int) -> Tensor:
    """A compiled call of a FrozenLeViT: its eager call (the image checks run again, for raw
    calls of the op; microseconds)."""
    return _frozen(frozen_id)(images)


@_frozen_forward.register_fake
def _(images, frozen_id):
    frozen = _frozen(frozen_id)
    return images.new_empty((images.shape[0], frozen.out_features), dtype=frozen.dtype)


def _frozen(frozen_id: int) -> FrozenLeViT:
    frozen = _LIVE.get(frozen_id)
    if frozen is None:
        raise RuntimeError("levit_kernels: the FrozenLeViT this compiled graph was traced from "
                           "no longer exists")
    return frozen
