"""FusedLeViT: LeViT whose eval-mode forward runs levit_kernels' fused ops.

`LeViT(..., fused=True)` builds one. It is the same module (same parameters, state dict and
training behaviour); what it adds is owned here, in one place:

* the plan (plan.py): BatchNorm folded, biases gathered, CPU weights packed — derived state,
  built for one device and dtype;
* the key that says whether the plan is still the model's (state_key.py: tensors, structure,
  attributes and hooks), checked on every eager call, and under torch.compile once when the
  graph is traced and again at run time by the graph itself (`levit::fused_plan_check`);
* every lifecycle hook that drops or rebuilds the plan at once (`train()`/`eval()`, `.to()`,
  `load_state_dict`, pickling, `refresh_fused()`);
* which forward runs: the fused kernels, or the plain layers whenever the kernels cannot give
  the plain model's answer — training mode, images that require grad (the kernels have no
  backward), torch.jit.trace and ONNX export (they cannot record or express the kernels),
  torch.func transforms, and models the plan does not fold (a replaced or hooked layer);
* the backend of each fused forward (plan.py): the one-call CPU program (eager, and as one
  op under torch.compile), the launchers, or the registered ops under torch.compile off the
  CPU — chosen once here and passed down; on GPU optionally replayed as one CUDA graph per
  input shape (`use_cuda_graphs()`, cuda_graphs.py).
"""
from __future__ import annotations

import warnings
import weakref

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.library import custom_op

from ..ops import checks, cpu
from .levit import LeViT, check_images
from .plan import (KERNEL_DTYPES, KERNELS, PROGRAM, TORCH_OPS, FusedPlan, Launchers,
                   UnsupportedModel)
from .state_key import StateKey

_warned = set()      # one warning per reason per process
_HALF_DTYPES = (torch.bfloat16, torch.float16)
# Live fused models by registry id: what the trace-time and run-time checks of torch.compile
# find their model by (a compiled graph can carry an int, not a module).
_LIVE: "weakref.WeakValueDictionary[int, FusedLeViT]" = weakref.WeakValueDictionary()


class _PlainPlan:
    """The plan of a model the fused plan does not fold (plan.UnsupportedModel): its forward
    runs the plain layers until the model changes."""

    def __init__(self, problem: str):
        self.problem = problem


class FusedLeViT(LeViT):
    """LeViT with fused eval-mode forwards (see the module docstring); built by
    `LeViT(..., fused=True)` or `create_model(..., fused=True)`."""

    fused = True
    _plan = None        # FusedPlan or _PlainPlan (each with .key), None until first needed
    _kernels = None     # None: each device's own kernels (plan.KERNELS); "cpu" / "gpu" forces
    _cuda_graphs = False

    def __init__(self, *args, fused: bool = True, **kwargs):
        if not fused:
            raise ValueError("fused: FusedLeViT always runs the fused ops; build LeViT(...) "
                             "for the plain model")
        super().__init__(*args, **kwargs)
        _register(self)

    def forward(self, x: torch.Tensor):
        if self.training:
            return super().forward(x)
        check_images(x, self.img_size)
        if _needs_plain_layers(self, x):
            return super().forward(x)
        compiling = torch.compiler.is_compiling()
        # Eager calls check the plan's key first: while it matches, the model's parameters are
        # the ones the key lists, which the check has just brought into cache. Walking the
        # model for them instead costs ~150 us per call at batch 1 (the forward's weights
        # evict everything; benchmarks/README.md, "Batch 1"). A trace must not read self._plan
        # here: Dynamo would keep that value past _plan_for_trace, which may replace it.
        plan = None if compiling else self._matching_plan()
        dtype = _compute_dtype(plan.key.parameters[0] if plan is not None
                               else next(self.parameters()), x)
        if not (x.dtype == dtype or (x.dtype == torch.float32 and dtype in _HALF_DTYPES)):
            # Images of another dtype (uint8, float64, float16 for a float32 model...): the
            # plain layers answer or refuse exactly as the plain model does. (float32 images
            # for a bf16 or float16 model, as a data loader gives them, are the one conversion
            # the fused model adds.)
            return super().forward(x)
        kernels = self._kernels_for(x.device)
        if self._kernels and not kernels and x.device.type in KERNELS:
            raise ValueError(f"images: use_kernels({self._kernels!r}) runs kernels that do not "
                             f"take {x.device.type} tensors; call model.use_kernels(None) for "
                             f"the device's own")
        if not _kernels_run(kernels, x.device, dtype, warn=True):
            return super().forward(x)
        if compiling:
            return self._traced_forward(x, dtype)
        plan = self._reuse_or_build(x.device, dtype, plan)
        if isinstance(plan, _PlainPlan):
            return super().forward(x)
        with torch.no_grad():
            backend = _backend(plan)
            if self._cuda_graphs and plan.device.type == "cuda" and backend is plan.backend:
                logits = _graphed(plan)(backend, plan, x)
            else:
                logits = backend.run(plan, x)
        # The plan's key lists the model's parameters (it matched, or was built just now).
        anchor = _parameter_requiring_grad(plan.key.parameters) if torch.is_grad_enabled() else None
        return logits if anchor is None else _NoBackward.apply(logits, anchor)

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
        """The kernel family for tensors on `device`: "" where there is none (meta, or the C++
        kernels forced by use_kernels("cpu") on CUDA tensors, which they cannot read)."""
        if device.type not in KERNELS or (self._kernels == "cpu" and device.type != "cpu"):
            return ""
        return self._kernels or KERNELS[device.type]

    # -- the plan and its key -----------------------------------------------------------------
    def _current_plan(self, device: torch.device, dtype: torch.dtype):
        return self._reuse_or_build(device, dtype, self._matching_plan())

    def _matching_plan(self):
        """The plan, if its key still matches the model (None otherwise)."""
        plan = self._plan
        return plan if plan is not None and plan.key.matches(self) else None

    def _reuse_or_build(self, device: torch.device, dtype: torch.dtype, plan):
        """`plan` (a matching one, or None) if it was built for `device` and `dtype`, else a
        new one."""
        if plan is None or plan.key.device != device or plan.key.dtype != dtype:
            plan = self._build_plan(device, dtype)
        return plan

    def _build_plan(self, device: torch.device, dtype: torch.dtype):
        # The key first: an edit made while the plan folds then shows at the next call.
        key = StateKey(self, device, dtype)
        try:
            with torch.no_grad():
                plan = FusedPlan(self, device, dtype, self._kernels_for(device))
        except UnsupportedModel as exc:
            plan = _PlainPlan(f"{_module_name(self, exc.module)} {exc.problem}")
            key.compare_hooks_always = True
            _warn_once(("unfused", plan.problem),
                       f"LeViT(fused=True) runs the plain layers: {plan.problem}")
        if key.has_inference_tensors():
            _warn_once("inference", "LeViT(fused=True): the model holds inference tensors "
                                    "(made under torch.inference_mode()), which have no "
                                    "version counter: after editing them in place, call "
                                    "model.refresh_fused()")
        plan.key = key
        self._plan = plan
        return plan

    # -- torch.compile and torch.export --------------------------------------------------------
    def _traced_forward(self, x: torch.Tensor, dtype: torch.dtype):
        if torch.compiler.is_exporting():
            if _autocast_on(x):
                # The plain graph's ops take autocast's dtype when the program runs; a fused
                # graph would keep the one autocast had while tracing.
                return super().forward(x)
            # An exported program must stand alone, so it cannot lean on this model's cache:
            # the plan is built inside the graph, from the parameters the program lifts (the
            # CPU weights stay unpacked: packing is a C++ call no graph can record).
            try:
                plan = FusedPlan(self, x.device, dtype, self._kernels_for(x.device),
                                 pack=False)
            except UnsupportedModel:
                return super().forward(x)
            return TORCH_OPS.run(plan, x)
        # torch.compile traces the plan that is current now (built eagerly, outside the
        # trace) and reads it on every call through self._plan; the graph then checks at run
        # time that it still is the model's. Dynamo guards on the plan's generation, so a
        # plan rebuilt since (an eager call, a hook, the check below) means a recompile.
        _plan_for_trace(self._registry_id, x.device, dtype)
        plan = self._plan
        if isinstance(plan, _PlainPlan):
            return super().forward(x)
        if plan.program is not None:
            # On CPU the graph holds the eager one-call program as one op: traced layer by
            # layer, every op allocated its output and the compiled forward ran at 0.41-0.83x
            # the eager one's speed (benchmarks/README.md, "torch.compile on CPU").
            return torch.ops.levit.fused_program(x, self._registry_id, plan.key.generation,
                                                 plan.program.output_features, plan.dtype)
        logits = TORCH_OPS.run(plan, x)
        return torch.ops.levit.fused_plan_check(logits, x, self._registry_id,
                                                plan.key.generation)

    # -- lifecycle hooks: a change the key would catch late is acted on at once ----------------
    def refresh_fused(self):
        """Rebuild the fused path's folded/packed weights now. Needed only after edits the
        cache cannot see: in-place changes through `.data` (which has its own version counter,
        e.g. `p.data.mul_(...)`) and in-place changes to inference tensors (which have none);
        everything else rebuilds it by itself."""
        self._refresh()

    def _refresh(self):
        """Drop the plan and, in eval mode, build it for the model's own device and dtype."""
        self._plan = None
        param = next(self.parameters(), None)
        if param is None:
            return
        if self.training or not _kernels_run(self._kernels_for(param.device), param.device,
                                             param.dtype, warn=False):
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

    def __setstate__(self, state):
        super().__setstate__(state)
        _register(self)     # a copy is another model: its own id


LeViT.fused_class = FusedLeViT


def _register(model: FusedLeViT) -> None:
    model._registry_id = id(model)
    _LIVE[model._registry_id] = model


def _plan_for_trace(registry_id: int, device: torch.device, dtype: torch.dtype) -> int:
    """The model's current plan for this device and dtype, built or rebuilt if need be;
    returns its generation. torch.compile calls this at trace time instead of tracing it
    (it reads tensors' version counters and runs C++ packing, which no trace can record)."""
    return _LIVE[registry_id]._current_plan(device, dtype).key.generation


# What torch.compiler.assume_constant_result(fn) does (set this flag: tests/
# test_pytorch_patterns.py checks that it still does), without importing torch._dynamo, which
# takes seconds, whenever levit_kernels is imported.
_plan_for_trace._dynamo_marked_constant = True


# The check is Python that must run on every call: a CUDA graph replaying the compiled forward
# would skip it, so inductor is told to keep it out of CUDA graphs.
_RUN_EVERY_CALL = tuple(getattr(torch.Tag, name) for name in ("cudagraph_unsafe",)
                        if hasattr(torch.Tag, name))


@custom_op("levit::fused_plan_check", mutates_args=(), device_types=("cpu", "cuda"),
           tags=_RUN_EVERY_CALL)
def _fused_plan_check(logits: Tensor, images: Tensor, registry_id: int,
                      generation: int) -> Tensor:
    """The last op of a compiled fused forward: its logits if the plan it traced is still the
    model's; if not (the weights were edited in place after compiling, an attribute
    changed...), the eager fused forward's, which rebuilds the plan (and the next call
    recompiles, the plan's generation having changed)."""
    model, plan = _traced_plan(registry_id, generation)
    if plan is not None:
        return logits.clone()      # an op's output may not alias its input
    return _eager_instead(model, images, logits.shape, logits.dtype)


@_fused_plan_check.register_fake
def _(logits, images, registry_id, generation):
    return torch.empty_like(logits)


@custom_op("levit::fused_program", mutates_args=(), device_types=("cpu",),
           tags=_RUN_EVERY_CALL)
def _fused_program(images: Tensor, registry_id: int, generation: int, out_features: int,
                   dtype: torch.dtype) -> Tensor:
    """A compiled fused forward on CPU: the plan's one-call C++ program, as the eager forward
    runs it, if the plan it traced is still the model's; if not, the eager fused forward
    (as in levit::fused_plan_check). `out_features` and `dtype` are the traced program's
    logits, for the fake implementation."""
    model, plan = _traced_plan(registry_id, generation)
    if plan is not None:
        # What a compiled graph passes, checked for raw calls of the op.
        if (out_features, dtype) != (plan.program.output_features, plan.dtype):
            raise ValueError(f"out_features, dtype: expected the plan's "
                             f"{plan.program.output_features}, {plan.dtype}; got "
                             f"{out_features}, {dtype}")
        if images.dtype not in (plan.dtype, torch.float32):
            raise TypeError(f"images: expected {plan.dtype} or float32 (the model's forward "
                            f"takes others), got {images.dtype}")
        with torch.no_grad():
            return PROGRAM.run(plan, images)
    return _eager_instead(model, images, (images.shape[0], out_features), dtype)


@_fused_program.register_fake
def _(images, registry_id, generation, out_features, dtype):
    return images.new_empty((images.shape[0], out_features), dtype=dtype)


def _traced_plan(registry_id: int, generation: int):
    """(the model, the plan a compiled graph traced if it is still the model's, else None)."""
    model = _LIVE.get(registry_id)
    if model is None:
        raise RuntimeError("levit_kernels: the fused LeViT this compiled graph was traced "
                           "from no longer exists")
    plan = model._plan
    if plan is not None and plan.key.generation == generation and plan.key.matches(model):
        return model, plan
    return model, None


def _eager_instead(model: "FusedLeViT", images: Tensor, shape, dtype: torch.dtype) -> Tensor:
    """A compiled call whose traced plan is no longer the model's: the eager fused forward,
    which rebuilds the plan (the next call recompiles, the plan's generation having changed),
    if its logits have the traced graph's shape and dtype."""
    _warn_once("recompute", "LeViT(fused=True) under torch.compile: the model changed after "
                            "its graph was traced; this call ran the eager fused forward, and "
                            "the next one recompiles")
    with torch.no_grad():
        eager = torch.compiler.disable(model.forward)(images)
    if eager.shape != tuple(shape) or eager.dtype != dtype:
        # The graph was traced for the old model's output; this op cannot return another.
        raise RuntimeError(
            f"LeViT(fused=True) under torch.compile: the model changed after its graph was "
            f"traced, and so did its output ({tuple(shape)} {dtype} -> "
            f"{tuple(eager.shape)} {eager.dtype}), which this compiled call cannot return. "
            f"Call the compiled model again: the next call recompiles for the model as it is now")
    return eager


def _needs_plain_layers(model: LeViT, x: torch.Tensor) -> bool:
    """Whether this eval-mode forward must run the plain layers whatever the plan."""
    if torch.jit.is_tracing():
        # The eager fused forward is one C++ call: the tracer would record only the empty
        # output it fills. Traced graphs (and TorchScript ONNX files) get the plain layers.
        _warn_once("jit", "torch.jit.trace (and the TorchScript torch.onnx.export) of "
                          "LeViT(fused=True) records the plain layers, not the fused kernels, "
                          "which the tracer cannot see; torch.compile and torch.export trace "
                          "the fused ops")
        return True
    if torch.compiler.is_compiling() and torch.onnx.is_in_onnx_export():
        return True         # ONNX has no levit::* operators: export the plain layers
    if torch.is_grad_enabled() and (x.requires_grad or (
            torch.compiler.is_compiling()
            and _parameter_requiring_grad(model.parameters()) is not None)):
        # The kernels have no backward: gradients w.r.t. the images (saliency maps,
        # adversarial examples) come from the plain layers, and so does a graph that autograd
        # will differentiate. (Eager calls with only the parameters requiring grad run fused:
        # see _NoBackward.)
        return True
    # vmap, grad, jacrev...: their wrapped tensors have no data for the C++ kernels to read.
    if torch._C._are_functorch_transforms_active():
        return True
    return not torch.compiler.is_compiling() and _kernels_cannot_see(x)


def _kernels_cannot_see(x: torch.Tensor) -> bool:
    """Eager calls whose tensors or ops something else must see: a tensor subclass for images
    (FakeTensor, __torch_function__ subclasses), a sparse, mkldnn or quantized one, a
    TorchDispatchMode (FakeTensorMode, FlopCounterMode...) or a TorchFunctionMode other than a
    default-device context, and forward-mode AD (dual tensors carry a tangent that only the
    plain layers propagate). The fused kernels are one C++ call none of these would see."""
    if type(x) is not torch.Tensor or x.layout != torch.strided or x.is_quantized:
        return True
    if torch._C._len_torch_dispatch_stack() or _forward_ad_level() >= 0:
        return True
    if torch._C._len_torch_function_stack():
        from torch.overrides import _get_current_function_mode_stack
        from torch.utils._device import DeviceContext
        # `with torch.device(...)` / set_default_device: the fused path allocates on the
        # images' device by itself, as the plain layers' ops do.
        return not all(isinstance(mode, DeviceContext)
                       for mode in _get_current_function_mode_stack())
    return False


def _forward_ad_level() -> int:
    """The innermost torch.autograd.forward_ad.dual_level() open now, -1 outside any."""
    return getattr(forward_ad, "_current_level", -1)


def _parameter_requiring_grad(parameters):
    return next((p for p in parameters if p.requires_grad), None)


class _NoBackward(torch.autograd.Function):
    """Fused eval-mode logits computed with grad mode on and the parameters requiring grad
    (inference without torch.no_grad(), the common case): they stay fused and fast, but, like
    the plain model's, they require grad, and backward() says what to do instead of autograd's
    generic complaint about a tensor without grad_fn. `anchor` is one of those parameters."""

    @staticmethod
    def forward(ctx, logits, anchor):
        return logits.clone()       # a Function's output may not be its input

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            "LeViT(fused=True) ran this eval-mode forward on its fused kernels, which have no "
            "backward. For gradients w.r.t. the weights use the plain layers: model.train(), "
            "or LeViT(..., fused=False) with the same state dict. (Images that require grad "
            "run the plain layers by themselves; inference needs torch.no_grad().)")


def _backend(plan: FusedPlan):
    """How an eager forward runs the plan: the one-call program for "cpu" plans, the GPU
    launchers for "gpu" plans (the torch.ops dispatcher's per-call cost is measurable at ~80
    calls per forward), kept on the plan. (Under torch.compile: _traced_forward.)"""
    if plan.program is not None:
        return PROGRAM
    if plan.kernels == "gpu":
        if plan.backend is None:
            from .gpu_backend import GpuLaunchers     # imports Triton: only when needed
            plan.backend = GpuLaunchers()
        return plan.backend
    return Launchers(plan.device)


def _module_name(model: LeViT, module) -> str:
    if module is model:
        return "the model"
    return next((f"model.{name}" for name, m in model.named_modules() if m is module),
                type(module).__name__)


def _graphed(plan: FusedPlan):
    """The plan's CUDA-graph replays (made on first use; dropped with the plan)."""
    if plan.graphs is None:
        from .cuda_graphs import GraphedForward
        plan.graphs = GraphedForward()
    return plan.graphs


def _compute_dtype(first_parameter: Tensor, images: torch.Tensor) -> torch.dtype:
    """The model's dtype (its first parameter's), or, for a float32 model, autocast's for the
    images' device (the ops take one dtype for all inputs): a float32 model under
    torch.autocast("cpu", dtype=torch.bfloat16) runs the bf16 kernels, and returns bf16 logits,
    as the plain model's last Linear does under autocast."""
    if first_parameter.dtype == torch.float32 and _autocast_on(images):
        return torch.get_autocast_dtype(images.device.type)
    return first_parameter.dtype        # autocast leaves float64 (and float16...) models alone


def _autocast_on(images: torch.Tensor) -> bool:
    device = images.device.type
    return device in ("cuda", "cpu") and torch.is_autocast_enabled(device)


def kernel_dtypes(kernels: str, device: torch.device):
    """The dtypes kernel family `kernels` takes on `device` (none for "")."""
    if kernels == "gpu" and device.type == "cpu":    # the Triton interpreter
        return checks.INTERPRETER_DTYPES
    return KERNEL_DTYPES.get(kernels, ())


def _kernels_run(kernels: str, device: torch.device, dtype: torch.dtype, *, warn: bool) -> bool:
    """Whether kernel family `kernels` can run a fused forward on `device` in `dtype`: it takes
    that dtype and, for the C++ kernels, the extension is built. The forward asks with
    `warn` (the plain layers then run, and the user is told why once per reason); the
    lifecycle hooks ask silently, to decide whether to build the plan ahead of time."""
    dtypes = kernel_dtypes(kernels, device)
    if dtype not in dtypes:
        if warn:
            _warn_once(("dtype", device.type, dtype),
                       f"LeViT(fused=True) runs the plain PyTorch path for {dtype} on "
                       f"{device.type}: the fused kernels take "
                       f"{', '.join(str(d) for d in dtypes)}")
        return False
    if kernels == "cpu" and not cpu.is_available():   # "cpu" kernels only ever get CPU tensors
        if warn:
            _warn_once("extension", f"LeViT(fused=True) runs the plain PyTorch path on CPU: "
                                    f"{cpu.unavailable_reason()}")
        return False
    return True


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
