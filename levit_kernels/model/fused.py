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
  registered ops under torch.compile — chosen once here and passed down; on GPU optionally
  replayed as one CUDA graph per input shape (`use_cuda_graphs()`, cuda_graphs.py).
"""
from __future__ import annotations

import warnings

import torch

from ..ops import cpu
from .levit import LeViT, check_images
from .plan import KERNEL_DTYPES, KERNELS, PROGRAM, TORCH_OPS, FusedPlan, Launchers

_warned = set()      # one warning per reason per process


class FusedLeViT(LeViT):
    """LeViT with fused eval-mode forwards (see the module docstring); built by
    `LeViT(..., fused=True)` or `create_model(..., fused=True)`."""

    fused = True
    _plan = None        # FusedPlan, or None until the first eval-mode forward
    _kernels = None     # None: each device's own kernels (plan.KERNELS); "cpu" / "gpu" forces
    _cuda_graphs = False

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
        kernels = self._kernels_for(x.device)
        if not _kernels_support(kernels, dtype):
            _warn_once(("dtype", x.device.type, dtype),
                       f"LeViT(fused=True) runs the plain PyTorch path for {dtype} on "
                       f"{x.device.type}: the fused kernels take "
                       f"{', '.join(str(d) for d in KERNEL_DTYPES.get(kernels, ()))}")
            return super().forward(x)
        if kernels == "cpu" and _extension_missing(x):
            return super().forward(x)
        with torch.no_grad():
            plan = self._current_plan(x.device, dtype)
            backend = _backend(plan)
            if self._cuda_graphs and plan.device.type == "cuda" and backend is plan.backend:
                return _graphed(plan)(backend, plan, x)
            return backend.run(plan, x)

    # -- switches ------------------------------------------------------------------------------
    def use_kernels(self, kernels=None):
        """Which kernels run the fused forward: None (default) the device's own (C++ on CPU,
        Triton on CUDA); "gpu" runs the Triton launchers, also on CPU tensors when
        TRITON_INTERPRET=1 was set before triton was imported (how the CUDA branch is tested
        without a GPU); "cpu" the C++ kernels. Returns the model."""
        if kernels not in (None, "cpu", "gpu"):
            raise ValueError(f"kernels: expected None, 'cpu' or 'gpu', got {kernels!r}")
        self._kernels = kernels
        self._plan = None
        return self

    def use_cuda_graphs(self, enabled: bool = True):
        """Replay eager CUDA forwards as one CUDA graph per input shape (captured on the first
        call of each shape; outputs are fresh tensors). Returns the model."""
        self._cuda_graphs = bool(enabled)
        return self

    def _kernels_for(self, device: torch.device) -> str:
        return self._kernels or KERNELS.get(device.type, "")

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
            plan = FusedPlan(self, device, dtype, self._kernels_for(device))
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
        if param is None:
            return
        kernels = self._kernels_for(param.device)
        if (self.training or not _kernels_support(kernels, param.dtype)
                or (kernels == "cpu" and _extension_missing(param, warn=False))):
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
    them to trace the graph), the one-call program for "cpu" plans, the GPU launchers for
    "gpu" plans (the torch.ops dispatcher's per-call cost is measurable at ~80 calls per
    forward), kept on the plan."""
    if torch.compiler.is_compiling():
        return TORCH_OPS
    if plan.program is not None:
        return PROGRAM
    if plan.kernels == "gpu":
        if plan.backend is None:
            from .gpu_backend import GpuLaunchers     # imports Triton: only when needed
            plan.backend = GpuLaunchers()
        return plan.backend
    return Launchers(plan.device)


def _graphed(plan: FusedPlan):
    """The plan's CUDA-graph replays (made on first use; dropped with the plan)."""
    if plan.graphs is None:
        from .cuda_graphs import GraphedForward
        plan.graphs = GraphedForward()
    return plan.graphs


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
    """The model's dtype, or autocast's on CUDA (the ops take one dtype for all inputs)."""
    if images.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return next(model.parameters()).dtype


def _kernels_support(kernels: str, dtype: torch.dtype) -> bool:
    return dtype in KERNEL_DTYPES.get(kernels, ())


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
