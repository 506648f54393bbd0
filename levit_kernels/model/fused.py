"""FusedLeViT: LeViT whose eval-mode forward runs levit_kernels' fused ops.

`LeViT(..., fused=True)` builds one. It is the same module (same parameters, state dict and
training behaviour); what it adds is owned here, in one place:

* the plan (plan.py): BatchNorm folded, biases gathered, CPU weights packed — derived state,
  built for one device and dtype;
* the key that says whether the plan is still the model's: every parameter's and buffer's
  storage and version counter, every submodule's identity, the device and dtype, checked on
  every eager call;
* every lifecycle hook that drops or rebuilds the plan at once (`train()`/`eval()`, `.to()`,
  `load_state_dict`, pickling, `refresh_fused()`), so torch.compile, which cannot run the
  key's checks, always finds a current plan;
* the backend of each forward (plan.py): the one-call CPU program, the launchers, or the
  registered ops under torch.compile — chosen once here and passed down.
"""
from __future__ import annotations

import warnings

import torch

from ..ops import checks, cpu
from .levit import LeViT, check_images
from .plan import PROGRAM, TORCH_OPS, FusedPlan, Launchers

_warned = set()      # one warning per reason per process


class FusedLeViT(LeViT):
    """LeViT with fused eval-mode forwards (see the module docstring); built by
    `LeViT(..., fused=True)` or `create_model(..., fused=True)`."""

    fused = True
    _plan = None        # FusedPlan, or None until the first eval-mode forward

    def __init__(self, *args, fused: bool = True, **kwargs):
        if not fused:
            raise ValueError("fused: FusedLeViT always runs the fused ops; build LeViT(...) "
                             "for the plain model")
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor):
        if self.training:
            return super().forward(x)
        check_images(x, self.img_size)
        dtype = _compute_dtype(self, x)
        if not _kernels_support(x.device, dtype):
            _warn_once(("dtype", x.device.type, dtype),
                       f"LeViT(fused=True) runs the plain PyTorch path for {dtype} on "
                       f"{x.device.type}: the fused kernels take "
                       f"{', '.join(str(d) for d in checks.OP_DTYPES.get(x.device.type, ()))}")
            return super().forward(x)
        if _extension_missing(x):
            return super().forward(x)
        with torch.no_grad():
            plan = self._current_plan(x.device, dtype)
            return _backend(plan).run(plan, x)

    # -- the plan and its key -----------------------------------------------------------------
    def _current_plan(self, device: torch.device, dtype: torch.dtype) -> FusedPlan:
        plan = self._plan
        if torch.compiler.is_compiling():
            # Under torch.compile the plan built eagerly before tracing is used as is (version
            # counters are not traceable); the hooks below rebuild it at once on every change
            # they see, and an in-place edit is seen by the next eager call or recompile.
            if plan is None:
                raise RuntimeError("torch.compile of a fused LeViT: run one eager forward first "
                                   "(model(images)) so the fused weights exist before tracing")
            return plan
        if plan is None or plan.key != _state_key(plan.slots, device, dtype):
            plan = self._build_plan(device, dtype)
        return plan

    def _build_plan(self, device: torch.device, dtype: torch.dtype) -> FusedPlan:
        with torch.no_grad():
            plan = FusedPlan(self, device, dtype)
        plan.slots = _state_slots(self)
        plan.key = _state_key(plan.slots, device, dtype)
        self._plan = plan
        return plan

    # -- lifecycle hooks: a change the key would catch late is acted on at once ----------------
    def refresh_fused(self):
        """Rebuild the fused path's folded/packed weights now. Needed only after edits the
        cache cannot see: in-place changes through `.data` (which has its own version counter,
        e.g. `p.data.mul_(...)`); everything else rebuilds it by itself."""
        self._refresh()

    def _refresh(self):
        """Drop the plan and, in eval mode, build it for the model's own device and dtype."""
        self._plan = None
        param = next(self.parameters(), None)
        if (self.training or param is None or not _kernels_support(param.device, param.dtype)
                or _extension_missing(param, warn=False)):
            return
        self._build_plan(param.device, param.dtype)

    def train(self, mode: bool = True):
        super().train(mode)
        self._refresh()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._refresh()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._refresh()
        return result

    def __getstate__(self):
        # The plan is derived state, and its C++ forward program cannot be pickled: a copy
        # (copy.deepcopy, torch.save of the whole model) builds its own on first use.
        state = self.__dict__.copy()
        state.pop("_plan", None)
        return state


LeViT.fused_class = FusedLeViT


def _backend(plan: FusedPlan):
    """How this forward runs the plan: the registered ops under torch.compile (which must see
    them to trace the graph), the one-call program on CPU, the GPU launchers otherwise (the
    torch.ops dispatcher's per-call cost is measurable at ~50 calls per forward)."""
    if torch.compiler.is_compiling():
        return TORCH_OPS
    if plan.program is not None:
        return PROGRAM
    return Launchers(plan.device)


def _state_slots(model: LeViT):
    """Where every submodule, parameter and buffer lives: (owning dict, name) pairs.

    Walking the module tree (model.parameters()) on every forward is a visible part of a
    batch-1 forward; the slots are found once per plan and then read directly. Reading them
    afresh still notices a tensor or a submodule put in place of another
    (model.head = ..., module.weight = ...): a replaced module's identity changes the key.
    BatchNorm's num_batches_tracked is left out: folding never reads it."""
    tensor_slots, module_slots = [], []
    for module in model.modules():
        tensor_slots += [(module._parameters, name) for name in module._parameters]
        tensor_slots += [(module._buffers, name) for name in module._buffers
                         if name != "num_batches_tracked"]
        module_slots += [(module._modules, name) for name in module._modules]
    return tensor_slots, module_slots


def _state_key(slots, device, dtype):
    """What the plan depends on: every tensor's storage and in-place version, every submodule's
    identity, the device and dtype. (Edits through `.data` bypass the version counter: call
    model.refresh_fused() after them.)"""
    tensor_slots, module_slots = slots
    key = [device, dtype]
    for owner, name in tensor_slots:
        t = owner[name]
        if t is not None:
            key += (t.data_ptr(), t._version)
    # the modules themselves, not id()s: the key keeps them alive, so a new module can never
    # reuse a replaced one's address
    key += [owner[name] for owner, name in module_slots]
    return tuple(key)


def _compute_dtype(model: LeViT, images: torch.Tensor) -> torch.dtype:
    """The model's dtype, or autocast's for the images' device (the ops take one dtype for all
    inputs): a float32 model under torch.autocast("cpu", dtype=torch.bfloat16) runs the bf16
    kernels, and returns bf16 logits, as the plain model's last Linear does under autocast."""
    device = images.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return next(model.parameters()).dtype


def _kernels_support(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type != "meta" and dtype in checks.OP_DTYPES.get(device.type, ())


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _extension_missing(tensor: torch.Tensor, warn: bool = True) -> bool:
    """True (and a one-time warning) when CPU tensors cannot use the C++ kernels."""
    if tensor.device.type != "cpu" or cpu.is_available():
        return False
    if warn:
        _warn_once("extension", f"LeViT(fused=True) runs the plain PyTorch path on CPU: "
                                f"{cpu.unavailable_reason()}")
    return True
