"""levit_kernels.freeze(model): the fused forward as a snapshot (model/frozen.py) — the fused
model's logits bit for bit, edits after freezing never reaching it, and every call it cannot
answer refused with what to use instead."""
import copy
import pickle
import threading

import pytest
import torch

from levit_kernels import FrozenLeViT, LeViT, cpu, freeze

from levit_testing import randomize_

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")

SIZE = 128      # a small image: the tests are about the snapshot, not the kernels' shapes


def fused_model(variant="LeViT-128S", **kwargs):
    plain = randomize_(LeViT(variant, img_size=SIZE, **kwargs)).eval()
    fused = LeViT(variant, fused=True, img_size=SIZE, **kwargs)
    fused.load_state_dict(plain.state_dict())
    return plain, fused.eval()


def images(batch=2, dtype=torch.float32):
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant,kwargs", [("LeViT-128S", {}), ("LeViT-192", {}),
                                            ("LeViT-128S", {"num_classes": 0}),
                                            ("LeViT-128S", {"distillation": False})])
def test_frozen_logits_are_the_fused_models(variant, kwargs, batch):
    plain, fused = fused_model(variant, **kwargs)
    frozen = freeze(fused)
    x = images(batch)
    with torch.no_grad():
        expected, reference = fused(x), plain(x)
    out = frozen(x)
    assert torch.equal(out, expected)
    assert out.shape == reference.shape and out.shape[1] == frozen.out_features
    assert ((out - reference).abs().max() / reference.abs().max()).item() <= 1e-5


def test_freezing_a_plain_model_gives_the_same_logits():
    plain, fused = fused_model()
    x = images()
    with torch.no_grad():
        assert torch.equal(freeze(plain)(x), fused(x))


def test_bfloat16_snapshots():
    """A bf16 model frozen as it is, and a float32 model frozen in bf16 (folded in float32,
    rounded once), give what the fused model gives in bf16 and under bf16 autocast; float32
    images are rounded to bf16 first, as by the fused model."""
    _, fused = fused_model()
    x = images()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = fused(x)
    from_float32 = freeze(fused, torch.bfloat16)
    assert from_float32.dtype == torch.bfloat16
    assert torch.equal(from_float32(x), under_autocast)
    fused.bfloat16()
    with torch.no_grad():
        expected = fused(x.bfloat16())
    frozen = freeze(fused)
    assert torch.equal(frozen(x.bfloat16()), expected)
    assert torch.equal(frozen(x), expected)
    assert expected.dtype == torch.bfloat16


def test_edits_after_freezing_do_not_reach_the_snapshot():
    plain, fused = fused_model()
    frozen = freeze(fused)
    x = images()
    before = frozen(x)
    with torch.no_grad():
        fused.head.linear.weight.mul_(2)                     # in place
        assert not torch.equal(fused(x), before)             # the model sees it at once
    fused.load_state_dict(randomize_(LeViT("LeViT-128S", img_size=SIZE)).state_dict())
    fused.stages[0].blocks[0].register_forward_hook(lambda *args: None)
    fused.train()
    assert torch.equal(frozen(x), before)
    del fused, plain                                         # the snapshot holds no model
    assert torch.equal(frozen(x), before)


def test_a_fused_models_current_plan_is_shared_not_copied():
    """Freezing a fused model whose plan is current (same device, dtype and kernels) takes
    that plan: no second copy of the packed weights. An edit then gives the model a new plan
    and leaves the snapshot's alone."""
    _, fused = fused_model()
    x = images()
    with torch.no_grad():
        fused(x)
    plan = fused._plan
    frozen = freeze(fused)
    assert frozen._plan is plan
    assert freeze(fused, torch.bfloat16)._plan is not plan       # another dtype: its own
    before = frozen(x)
    with torch.no_grad():
        fused.head.linear.bias.add_(1)
        fused(x)
    assert fused._plan is not plan and frozen._plan is plan
    assert torch.equal(frozen(x), before)


def test_grad_mode_and_inference_mode():
    """Called without torch.no_grad(), the logits do not require grad (a snapshot holds no
    parameters); under inference_mode it runs as well."""
    _, fused = fused_model()
    frozen = freeze(fused)
    x = images()
    out = frozen(x)
    assert not out.requires_grad
    with torch.inference_mode():
        assert torch.equal(frozen(x), out)


def test_concurrent_calls_give_the_same_logits():
    _, fused = fused_model()
    frozen = freeze(fused)
    x = images(3)
    expected = frozen(x)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(frozen(x))
        except Exception as exc:     # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    assert all(torch.equal(r, expected) for r in results)


def test_torch_compile_traces_one_op_fullgraph():
    _, fused = fused_model()
    frozen = freeze(fused)
    x = images()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    compiled = torch.compile(lambda t: frozen(t).softmax(-1), backend=backend, fullgraph=True)
    assert torch.equal(compiled(x), frozen(x).softmax(-1))
    levit_ops = [str(n.target) for n in graphs[0].graph.nodes
                 if n.op == "call_function" and str(n.target).startswith("levit.")]
    assert levit_ops in (["levit.frozen_forward"], ["levit.frozen_forward.default"])


def test_the_compile_op_passes_opcheck():
    _, fused = fused_model()
    frozen = freeze(fused)
    torch.library.opcheck(torch.ops.levit.frozen_forward.default, (images(), frozen._id))


def test_the_compile_op_checks_raw_calls():
    _, fused = fused_model()
    frozen = freeze(fused)
    op = torch.ops.levit.frozen_forward
    assert torch.equal(op(images(), frozen._id), frozen(images()))
    with pytest.raises(TypeError, match="images: expected torch.float32, got torch.float64"):
        op(images().double(), frozen._id)
    with pytest.raises(ValueError, match="images: expected spatial size"):
        op(torch.randn(1, 3, 64, 64), frozen._id)
    gone = frozen._id
    del frozen
    with pytest.raises(RuntimeError, match="no longer exists"):
        op(images(), gone)


REFUSED_MODELS = {
    "training mode": (lambda m: freeze(m.train()), ValueError, r"call model\.eval\(\) first"),
    "float64": (lambda m: freeze(m.double()), TypeError, "dtype: the fused kernels on cpu take"),
    "float16 asked": (lambda m: freeze(m, torch.float16), TypeError, "got torch.float16"),
    "not a dtype": (lambda m: freeze(m, "bfloat16"), TypeError, "dtype: expected a torch.dtype"),
    "meta": (lambda m: freeze(m.to("meta")), ValueError, "its parameters are on meta"),
    "hooked layer": (lambda m: (m.stages[1].blocks[0].mlp.register_forward_hook(
        lambda *args: None), freeze(m)), ValueError, "model.stages.1.blocks.0.mlp"),
    "not a LeViT": (lambda m: freeze(torch.nn.Linear(2, 2)), TypeError,
                    "model: expected a levit_kernels LeViT, got Linear"),
}


@pytest.mark.parametrize("case", list(REFUSED_MODELS))
def test_models_it_cannot_freeze_are_refused(case):
    fn, exc, message = REFUSED_MODELS[case]
    _, fused = fused_model()
    with pytest.raises(exc, match=message):
        fn(fused)


REFUSED_CALLS = {
    "jit.trace": (lambda f, x: torch.jit.trace(lambda t: f(t), x), RuntimeError,
                  "trace the model, or torch.export it"),
    "images that require grad": (lambda f, x: f(x.clone().requires_grad_()), RuntimeError,
                                 "images: they require grad"),
    "vmap": (lambda f, x: torch.func.vmap(f)(x.unsqueeze(1)), RuntimeError,
             "call the model itself"),
    "forward AD": (lambda f, x: _dual(f, x), RuntimeError, "forward AD"),
    "float64 images": (lambda f, x: f(x.double()), TypeError,
                       "images: expected torch.float32, got torch.float64"),
    "meta images": (lambda f, x: f(x.to("meta")), ValueError, "images: expected device cpu"),
    "other size": (lambda f, x: f(torch.randn(1, 3, 64, 64)), ValueError,
                   r"images: expected spatial size \(128, 128\)"),
    "one channel": (lambda f, x: f(x[:, :1]), ValueError, r"images: expected shape \(B, 3,"),
    "not a tensor": (lambda f, x: f(x.numpy()), ValueError, "images: expected a"),
    "pickle": (lambda f, x: pickle.dumps(f), TypeError, "freeze it again where it is loaded"),
    "deepcopy": (lambda f, x: copy.deepcopy(f), TypeError, "cannot be pickled or copied"),
}


def _dual(frozen, x):
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        return frozen(fwAD.make_dual(x, torch.ones_like(x)))


@pytest.mark.parametrize("case", list(REFUSED_CALLS))
def test_calls_it_cannot_answer_are_refused(case):
    fn, exc, message = REFUSED_CALLS[case]
    _, fused = fused_model()
    frozen = freeze(fused)
    with pytest.raises(exc, match=message):
        fn(frozen, images())


def test_repr_and_attributes():
    _, fused = fused_model()
    frozen = freeze(fused, torch.bfloat16)
    assert isinstance(frozen, FrozenLeViT)
    assert (frozen.device, frozen.dtype, frozen.img_size) == (torch.device("cpu"),
                                                              torch.bfloat16, (SIZE, SIZE))
    assert repr(frozen) == "FrozenLeViT(LeViT-128S, cpu, torch.bfloat16, img_size=(128, 128))"
