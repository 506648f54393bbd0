"""LeViT(fused=True) under everyday PyTorch patterns (issue 13): never a silently wrong answer.

The plain model with the same weights is the oracle. Each pattern either gives its answer or
refuses with an error that says what to do:

    torch.jit.trace, TorchScript ONNX export    the plain layers are recorded (the fused
                                                forward is one C++ call no tracer sees)
    torch.onnx.export(dynamo=True)              the plain layers (ONNX has no levit ops)
    torch.export                                the fused ops, the plan folded in the graph
    torch.compile                               the fused ops, the plan checked at trace time
                                                and by the graph itself at run time
    attribute edits, replaced/hooked layers     seen by the plan's key; layers the plan does
                                                not fold run plain
    inference-mode models, prune, parametrize   fused, equal to plain
    images that require grad                    the plain layers (gradients are exact)
    weights that require grad, images not       fused logits; backward() refuses, saying why
    meta init + to_empty + load_state_dict      the bias offsets are rebuilt
    global module hooks, methods set on an      the plain layers (the key counts each
    instance, dispatch / function modes,        module's attributes, so a new one shows);
    tensor subclasses, forward-mode AD          a default-device context changes nothing
    images of another dtype                     the plain layers: the plain model's answer
                                                or error (float32 into bf16/fp16 converts)

A two-stage LeViT at 64 px keeps every layer kind (stem, attention, shrinking attention, MLP,
both heads) and makes plans, forwards and compiles fast.
"""
import io
import re

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize, prune

from levit_kernels import LeViT, LeViTConfig, cpu
from levit_kernels.model import fused as fused_module
from levit_kernels.model.plan import FusedPlan

from levit_testing import randomize_

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")

TINY = LeViTConfig("tiny", embed_dim=(32, 48), key_dim=16, num_heads=(2, 3), depth=(1, 1))
SIZE, CLASSES = 64, 10


def make(fused=False, **kwargs):
    return LeViT(TINY, fused=fused, img_size=SIZE, num_classes=CLASSES, **kwargs)


def pair(**kwargs):
    """A plain model and a fused one with the same random weights, both in eval mode."""
    plain = randomize_(make(**kwargs), torch.Generator().manual_seed(0)).eval()
    fused = make(fused=True, **kwargs)
    fused.load_state_dict(plain.state_dict())
    return plain, fused.eval()


def images(batch=2, seed=1):
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def assert_same(out, expected):
    """The fused kernels' float32 tolerance (see test_fused_model.py)."""
    assert out.shape == expected.shape
    err = (out - expected).abs().max().item()
    assert err <= 1e-5 * expected.abs().max().item(), f"max err {err:.3e}"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Warnings are once per process: each test sees its own."""
    monkeypatch.setattr(fused_module, "_warned", set())


@pytest.fixture
def compiler():
    """torch.compile on a clean slate (every test's model is another guard on the same code:
    past dynamo's recompile limit it would quietly run eager). aot_eager: dynamo and
    AOTAutograd, which the plan checks live in, without inductor's C++ builds; inductor itself
    is covered by test_fused_model.py."""
    torch._dynamo.reset()
    yield lambda model: torch.compile(model, backend="aot_eager", fullgraph=True)
    torch._dynamo.reset()


# ---- 1, 2: tracers and exporters ---------------------------------------------------------------
def test_jit_trace_records_the_plain_layers():
    plain, fused = pair()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="records the plain layers"):
        traced = torch.jit.trace(fused, images(seed=1))
    with torch.no_grad():                       # other images: nothing was baked in
        assert_same(traced(images(seed=2)), plain(images(seed=2)))


def _onnx_logits(model_proto, x):
    onnx_reference = pytest.importorskip("onnx.reference")
    session = onnx_reference.ReferenceEvaluator(model_proto)
    (name,) = [i.name for i in model_proto.graph.input]
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def test_torchscript_onnx_export_is_the_plain_graph():
    onnx = pytest.importorskip("onnx")
    plain, fused = pair()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(fused, (images(seed=1),), buffer, dynamo=False)
        assert_same(_onnx_logits(onnx.load_from_string(buffer.getvalue()), images(seed=2)),
                    plain(images(seed=2)))


def test_dynamo_onnx_export_is_the_plain_graph():
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    plain, fused = pair()
    with torch.no_grad():
        program = torch.onnx.export(fused, (images(seed=1),), dynamo=True, verbose=False)
        assert_same(_onnx_logits(program.model_proto, images(seed=2)), plain(images(seed=2)))


def test_torch_export_folds_the_plan_inside_the_graph():
    """An exported program stands alone: it folds the weights it lifts, so an edit made after
    the model's plan was built (and no eager call since) is in it."""
    plain, fused = pair()                       # eval() built the plan
    with torch.no_grad():
        for model in (plain, fused):
            model.stages[0].blocks[0].mlp.ln1.linear.weight.mul_(-2.0)
        program = torch.export.export(fused, (images(seed=1),))
        assert any(str(node.target).startswith("levit.") for node in program.graph.nodes)
        assert_same(program.module()(images(seed=2)), plain(images(seed=2)))


# ---- 3: torch.compile ----------------------------------------------------------------------------
def test_compile_sees_edits_made_before_and_after_compiling(compiler):
    plain, fused = pair()                       # eval() built the plan
    x = images()

    def edit(change):
        with torch.no_grad():
            for model in (plain, fused):
                change(model)

    edit(lambda m: m.head.linear.weight.mul_(-1.0))          # no eager call after it
    compiled = compiler(fused)
    with torch.no_grad():
        assert_same(compiled(x), plain(x))
        edit(lambda m: m.stages[0].blocks[0].mlp.ln1.linear.weight.mul_(2.0))
        assert_same(compiled(x), plain(x))      # the graph's own check: eager this once
        assert_same(compiled(x), plain(x))      # recompiled
        edit(lambda m: setattr(m.stages[1].blocks[0].attn, "scale", 0.05))
        assert_same(compiled(x), plain(x))
        assert_same(compiled(x), plain(x))


def test_compile_rebuilds_a_plan_made_for_another_device(compiler):
    plain, fused = pair()
    fused._build_plan(torch.device("meta"), torch.float32)    # as if last run elsewhere
    with torch.no_grad():
        assert_same(compiler(fused)(images()), plain(images()))


def test_trace_time_helper_is_marked_as_assume_constant_result_marks():
    """fused.py marks _plan_for_trace by hand (importing torch._dynamo takes seconds): the
    flag must still be what torch.compiler.assume_constant_result sets."""
    def probe():
        return 0

    torch.compiler.assume_constant_result(probe)
    assert vars(probe) == {"_dynamo_marked_constant": True}
    assert vars(fused_module._plan_for_trace) == vars(probe)


# ---- 4: the plan's key sees attributes, replaced and hooked layers ---------------------------------
def _head_linear(model):
    torch.manual_seed(3)                        # the same new head in both models
    model.head = nn.Linear(48, CLASSES)


def _doubling_hook(model):
    model.stages[0].blocks[0].mlp.register_forward_hook(lambda module, inputs, out: 2 * out)


def _halving_forward(model):
    mlp = model.stages[0].blocks[0].mlp
    mlp.forward = lambda x, forward=mlp.forward: 0.5 * forward(x)


def _first_five_classes(model):
    model.forward_head = lambda features, head=model.forward_head: head(features)[:, :5]


# edit -> whether the fused model still runs fused after it, or must run the plain layers
EDITS = {
    "BatchNorm eps": (lambda m: setattr(m.stages[0].blocks[0].mlp.ln1.bn, "eps", 0.5), "fused"),
    "distillation": (lambda m: setattr(m, "distillation", False), "fused"),
    "attention scale": (lambda m: setattr(m.stages[0].blocks[0].attn, "scale", 0.02), "fused"),
    "shrinking attention scale": (lambda m: setattr(m.stages[1].downsample.attn_downsample,
                                                    "scale", 1.0), "fused"),
    "head replaced by nn.Linear": (_head_linear, "fused"),
    "stem padding mode": (lambda m: setattr(m.stem.conv2.linear, "padding_mode", "reflect"),
                          "plain"),
    "forward hook on a block": (_doubling_hook, "plain"),
    "a block in training mode": (lambda m: m.stages[0].blocks[0].train(), "plain"),
    # methods replaced on the instance: the plain forward calls them (a new attribute, which
    # the key counts)
    "forward of an MLP set on the instance": (_halving_forward, "plain"),
    "forward_head set on the model": (_first_five_classes, "plain"),
}


@pytest.mark.parametrize("edit, runs", EDITS.values(), ids=EDITS)
def test_edits_after_the_plan_was_built(edit, runs):
    plain, fused = pair()
    x = images()
    with torch.no_grad():
        fused(x)                                # the plan exists
        edit(plain)
        edit(fused)
        assert_same(fused(x), plain(x))
    assert isinstance(fused._plan, FusedPlan) == (runs == "fused")


def test_an_unchanged_model_keeps_its_plan():
    """The key must not see changes that are not there: a hook on another model, a
    registration, a plain forward of another model."""
    _, fused = pair()
    x = images()
    with torch.no_grad():
        fused(x)
        plan = fused._plan
        other = make()
        other.register_forward_hook(lambda *args: None)
        other(x)
        fused(x)
    assert fused._plan is plan and isinstance(plan, FusedPlan)


# ---- 5: inference mode ---------------------------------------------------------------------------
def test_model_made_under_inference_mode():
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="inference tensors.*refresh_fused"):
            plain, fused = pair()
        x = images()
        assert_same(fused(x), plain(x))
        new = randomize_(make(), torch.Generator().manual_seed(7)).state_dict()
        plain.load_state_dict(new)
        fused.load_state_dict(new)
        assert_same(fused(x), plain(x))
    with torch.no_grad():
        assert_same(fused(x), plain(x))


# ---- 6: prune and parametrize --------------------------------------------------------------------
class Scale(nn.Module):
    """A parametrization with a plain attribute of its own."""

    def __init__(self):
        super().__init__()
        self.factor = 1.5

    def forward(self, tensor):
        return tensor * self.factor


REWRITES = {
    "prune a Linear": lambda m: prune.l1_unstructured(m.stages[0].blocks[0].mlp.ln1.linear,
                                                      "weight", 0.5),
    "prune a stem conv": lambda m: prune.l1_unstructured(m.stem.conv2.linear, "weight", 0.3),
    "prune a BatchNorm": lambda m: prune.l1_unstructured(m.stages[1].blocks[0].attn.qkv.bn,
                                                         "weight", 0.5),
    "prune attention biases": lambda m: prune.l1_unstructured(m.stages[0].blocks[0].attn,
                                                              "attention_biases", 0.3),
    "parametrize a Linear": lambda m: parametrize.register_parametrization(
        m.stages[1].downsample.attn_downsample.kv.linear, "weight", Scale()),
    "parametrize attention biases": lambda m: parametrize.register_parametrization(
        m.stages[1].blocks[0].attn, "attention_biases", Scale()),
    "parametrize the head": lambda m: parametrize.register_parametrization(
        m.head_dist.linear, "weight", Scale()),
}


@pytest.mark.parametrize("rewrite", REWRITES.values(), ids=REWRITES)
def test_pruned_or_parametrized_layer(rewrite):
    plain, fused = pair()
    x = images()
    with torch.no_grad():
        fused(x)
        rewrite(plain)
        rewrite(fused)
        assert_same(fused(x), plain(x))
        assert isinstance(fused._plan, FusedPlan)           # folded, not run plain
        for model in (plain, fused):                         # then what they are made of
            for name, tensor in model.named_parameters():
                if name.endswith(("_orig", "original")):
                    tensor.mul_(-1.0)
            for module in model.modules():
                if isinstance(module, Scale):
                    module.factor = -0.5
        assert_same(fused(x), plain(x))


def test_functional_call_runs_the_weights_it_is_given():
    """torch.func.functional_call swaps the parameters in for one call: the fused model runs
    those, then its own again (the key sees both swaps)."""
    plain, fused = pair()
    x = images()
    with torch.no_grad():
        fused(x)                                              # a plan for its own weights
        swapped = {name: 1.5 * p for name, p in plain.named_parameters()}
        assert_same(torch.func.functional_call(fused, swapped, (x,)),
                    torch.func.functional_call(plain, swapped, (x,)))
        assert_same(fused(x), plain(x))


# ---- 7: gradients in eval mode --------------------------------------------------------------------
def test_input_gradients_in_eval_mode():
    plain, fused = pair()
    grads = []
    for model in (fused, plain):
        x = images().requires_grad_()
        out = model(x)
        assert out.requires_grad
        out.logsumexp(dim=1).sum().backward()
        grads.append(x.grad)
    assert_same(*grads)
    assert_same(fused.stages[0].blocks[0].attn.attention_biases.grad,
                plain.stages[0].blocks[0].attn.attention_biases.grad)


def test_input_gradients_under_torch_func():
    plain, fused = pair()
    grads = [torch.func.grad(lambda x: model(x).logsumexp(dim=1).sum())(images())
             for model in (fused, plain)]
    assert_same(*grads)


def test_weight_gradients_of_fused_logits_are_refused_clearly():
    """Grad mode on, weights requiring grad, images not (inference without no_grad): the
    logits stay fused, require grad like the plain model's, and backward() says what to do."""
    plain, fused = pair()
    out = fused(images())
    assert out.requires_grad
    with torch.no_grad():
        assert_same(out.detach(), plain(images()))
    with pytest.raises(RuntimeError, match=r"no backward.*model\.train\(\)"):
        out.sum().backward()


def test_logits_require_grad_when_the_plain_models_do():
    """Grad mode on: the fused logits require grad exactly when the plain model's do, read
    afresh on every call (requires_grad_ is no edit the plan's key sees, nor needs to)."""
    plain, fused = pair()
    for setting in (True, False, True, False):
        for model in (plain, fused):
            model.requires_grad_(setting)
        assert fused(images()).requires_grad is plain(images()).requires_grad is setting
    for model in (plain, fused):                 # one parameter, the last one, is enough
        list(model.parameters())[-1].requires_grad_(True)
    assert fused(images()).requires_grad and plain(images()).requires_grad


# ---- 8: meta-device initialisation ------------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_meta_init_then_to_empty_and_load_state_dict(fused):
    plain, _ = pair()
    with torch.device("meta"):
        model = make(fused=fused)
    model.to_empty(device="cpu")
    model.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert_same(model.eval()(images()), plain(images()))


def test_meta_init_then_load_state_dict_with_assign():
    plain, _ = pair()
    with torch.device("meta"):
        model = make(fused=True)
    model.load_state_dict(plain.state_dict(), assign=True)
    with torch.no_grad():
        assert_same(model.eval()(images()), plain(images()))



# ---- 9: what PyTorch runs around a forward: hooks, modes, subclasses, forward AD, devices --------
@pytest.mark.parametrize("register", [nn.modules.module.register_module_forward_pre_hook,
                                      nn.modules.module.register_module_forward_hook],
                         ids=["pre-hook", "hook"])
def test_global_module_hooks_run_the_plain_layers(register):
    """A hook for every module of every model changes what the plain layers compute: while one
    is registered the fused model runs them; once removed, fused again."""
    plain, fused = pair()
    x = images()

    def scale_linear_inputs(module, inputs, *output):
        if isinstance(module, nn.Linear):
            return (1.5 * inputs[0],) if not output else 1.5 * output[0]

    with torch.no_grad():
        fused(x)
        handle = register(scale_linear_inputs)
        try:
            with pytest.warns(RuntimeWarning, match="global forward hooks"):
                assert_same(fused(x), plain(x))
        finally:
            handle.remove()
        assert_same(fused(x), plain(x))
    assert isinstance(fused._plan, FusedPlan)


def test_a_removed_hook_lets_the_model_run_fused_again():
    """Removing a hook moves no registration counter: a plan that runs the plain layers
    compares the hooks on every call, so the model runs fused again once it is gone."""
    plain, fused = pair()
    x = images()
    with torch.no_grad():
        handle = fused.stages[0].blocks[0].mlp.register_forward_hook(lambda *args: None)
        fused(x)
        assert not isinstance(fused._plan, FusedPlan)
        handle.remove()
        assert_same(fused(x), plain(x))
    assert isinstance(fused._plan, FusedPlan)


def test_a_default_device_context_still_computes_on_the_images_device():
    """`with torch.device("meta")` (or set_default_device) is about where new tensors go by
    default: the plain layers' ops follow their CPU inputs, and so must the fused program's
    own allocations (a meta output handed to C++ was a crash)."""
    plain, fused = pair()
    x = images()
    with torch.no_grad():
        expected = plain(x)
        fused(x)
        with torch.device("meta"):
            out = fused(x)
    assert out.device.type == "cpu"
    assert_same(out, expected)


def test_fake_tensor_mode_gets_the_plain_layers():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    plain, fused = pair()
    with torch.no_grad():
        fused(images())
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = torch.empty(2, 3, SIZE, SIZE)
            out, expected = fused(fake), plain(fake)
    assert isinstance(out, FakeTensor) and out.shape == expected.shape == (2, CLASSES)


def test_dispatch_modes_see_the_plain_ops():
    """FlopCounterMode (a TorchDispatchMode) counts what the model computes: the fused model
    shows it the plain layers' ops instead of one opaque C++ call."""
    from torch.utils.flop_counter import FlopCounterMode
    plain, fused = pair()
    counts = []
    with torch.no_grad():
        fused(images())
        for model in (plain, fused):
            with FlopCounterMode(display=False) as counter:
                model(images())
            counts.append(counter.get_total_flops())
    assert counts[0] > 0 and counts[1] == counts[0]


class _Tagged(torch.Tensor):
    """A __torch_function__ subclass: ops on it return it."""


def test_tensor_subclass_images_get_the_plain_layers():
    plain, fused = pair()
    x = images().as_subclass(_Tagged)
    with torch.no_grad():
        out, expected = fused(x), plain(x)
    assert type(out) is type(expected) is _Tagged
    assert_same(out.as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor))


def test_forward_mode_ad_propagates_the_tangent():
    import torch.autograd.forward_ad as fwAD
    plain, fused = pair()
    x, tangent = images(), images(seed=2)
    tangents = []
    with torch.no_grad():
        fused(x)
        for model in (plain, fused):
            with fwAD.dual_level():
                tangents.append(fwAD.unpack_dual(model(fwAD.make_dual(x, tangent))).tangent)
    assert tangents[1] is not None
    assert_same(tangents[1], tangents[0])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool, torch.float64,
                                   torch.float16, torch.bfloat16])
def test_images_of_another_dtype_behave_as_in_the_plain_model(dtype):
    """A float32 model refuses images of another dtype (F.conv2d's own error); the fused one
    used to cast them silently. They get the plain layers: the same answer or the same error."""
    plain, fused = pair()
    x = (100 * images()).to(dtype)
    outcomes = []
    with torch.no_grad():
        fused(images())
        for model in (plain, fused):
            try:
                outcomes.append(model(x))
            except (RuntimeError, TypeError) as exc:
                outcomes.append(type(exc))
    if isinstance(outcomes[0], torch.Tensor):
        assert_same(outcomes[1], outcomes[0])
    else:
        assert outcomes[1] is outcomes[0]


def test_a_float64_model_under_bf16_autocast_stays_float64():
    """CPU autocast casts float32 only: a float64 model computes (and answers) in float64, and
    the fused one runs the plain layers for it rather than the bf16 kernels."""
    plain, fused = pair()
    plain.double()
    fused.double()
    x = images().double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = fused(x), plain(x)
    assert out.dtype == expected.dtype == torch.float64
    assert torch.allclose(out, expected, rtol=1e-9, atol=1e-12)


def test_export_under_autocast_is_the_plain_graph():
    """A program exported under autocast runs its ops in autocast's dtype only where autocast
    is on when it runs: the fused model exports the plain graph then, so that its program
    answers like the plain one's inside and outside autocast."""
    plain, fused = pair()
    x = images()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        programs = [torch.export.export(model, (x,)).module() for model in (plain, fused)]
    with torch.no_grad():
        out, expected = programs[1](x), programs[0](x)
        assert out.dtype == expected.dtype == torch.float32
        assert_same(out, expected)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, expected = programs[1](x), programs[0](x)
    assert out.dtype == expected.dtype
    assert torch.equal(out, expected)


def test_compile_after_an_edit_that_changes_the_output_shape(compiler):
    """The graph checks its plan when it runs: after a new 5-class head the plan is stale and
    its logits the wrong shape, which the compiled call cannot return. It says so, and the
    next call recompiles."""
    plain, fused = pair()
    x = images()
    compiled = compiler(fused)
    with torch.no_grad():
        assert_same(compiled(x), plain(x))
        for model in (plain, fused):
            torch.manual_seed(5)
            model.head, model.head_dist = nn.Linear(48, 5), nn.Linear(48, 5)
        with pytest.raises(RuntimeError, match=r"output.*\(2, 10\).*\(2, 5\).*Call the "
                                               r"compiled model again"):
            compiled(x)
        assert_same(compiled(x), plain(x))


def test_an_empty_batch_gives_empty_logits_in_both_models():
    """The plain model used to fail on batch 0 (a reshape with -1 has no answer for 0
    elements) while the fused one returned (0, classes); both now return it."""
    plain, fused = pair()
    with torch.no_grad():
        for model in (plain, fused):
            out = model(images(batch=0))
            assert out.shape == (0, CLASSES) and out.dtype == torch.float32


@pytest.mark.parametrize("part", ["head", "stem", "stages"])
def test_a_model_cast_in_part_behaves_as_the_plain_one(part, monkeypatch):
    """The fused forward computes in one dtype; it used to run a model with a bf16 head (or
    stem, or stages) and float32 elsewhere, where the plain model refuses the mix."""
    monkeypatch.setattr(fused_module, "_warned", set())
    plain, fused = pair()
    for model in (plain, fused):
        getattr(model, part).bfloat16()
    x = images()
    with torch.no_grad():
        try:
            want = plain(x)
        except RuntimeError as exc:
            with pytest.raises(RuntimeError, match=re.escape(str(exc).splitlines()[0])), \
                    pytest.warns(RuntimeWarning, match="several dtypes"):
                fused(x)
        else:
            with pytest.warns(RuntimeWarning, match="several dtypes"):
                torch.testing.assert_close(fused(x), want, rtol=0, atol=0)
