"""LeViT(fused=True): same logits as the plain model, a cache that is never stale."""
import copy

import pytest
import torch

from levit_kernels import LeViT, LeViTConfig, cpu, load_checkpoint
from levit_kernels.model.checkpoint import resize_attention_biases

from levit_testing import randomize_

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")

PAPER = ["LeViT-128S", "LeViT-128", "LeViT-192", "LeViT-256", "LeViT-384"]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def pair(variant="LeViT-128S", **kwargs):
    """A plain model and a fused one with the same random weights, both in eval mode."""
    plain = randomize_(LeViT(variant, **kwargs)).eval()
    fused = LeViT(variant, fused=True, **kwargs)
    fused.load_state_dict(plain.state_dict())
    return plain, fused.eval()


@pytest.mark.parametrize("variant", PAPER)
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_logits_match_plain(variant, batch):
    plain, fused = pair(variant)
    images = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(fused(images), plain(images)) <= 1e-5


@pytest.mark.parametrize("img_size", [256, 288, (224, 320), 200])
def test_other_resolutions(img_size):
    plain, fused = pair("LeViT-128S", img_size=img_size)
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert rel_err(fused(images), plain(images)) <= 1e-5


def test_shrinking_attention_with_stride_1():
    """A config may 'shrink' by 1 (new width, same grid): the C++ program tells shrinking
    attention by its own q weights, not by the stride."""
    config = LeViTConfig("stride-1", (64, 128), 16, (4, 4), (1, 1), down_stride=1)
    plain, fused = pair(config, img_size=64, num_classes=10)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(fused(images), plain(images)) <= 1e-5
    assert fused._plan.program is not None          # the one-call C++ forward ran it


def test_a_scale_held_as_a_tensor_runs_the_plain_layers():
    """A tensor attribute can change in place, which no key sees (only parameters and buffers
    have recorded versions): the plan refuses to read one once, so edits show."""
    plain, fused = pair(LeViTConfig("tiny", (64, 128), 16, (4, 4), (1, 1)), img_size=64)
    images = torch.randn(2, 3, 64, 64)
    for model in (plain, fused):
        model.stages[0].blocks[0].attn.scale = torch.tensor(0.25)
    with pytest.warns(RuntimeWarning, match="holds scale as a tensor"):
        fused.refresh_fused()
        with torch.no_grad():
            fused(images)
    for model in (plain, fused):
        model.stages[0].blocks[0].attn.scale.mul_(8)
    with torch.no_grad():
        assert rel_err(fused(images), plain(images)) <= 1e-5


def test_non_square_bias_tables_match_timm():
    timm = pytest.importorskip("timm")
    ref = randomize_(timm.create_model("levit_128s", img_size=(224, 320))).eval()
    ours = LeViT("128S", img_size=(224, 320))
    ours.load_state_dict(ref.state_dict())
    images = torch.randn(1, 3, 224, 320)
    with torch.no_grad():
        assert rel_err(ours.eval()(images), ref(images)) <= 1e-5


def test_checkpoint_from_another_resolution_is_resized():
    source = randomize_(LeViT("128S")).eval()
    target = LeViT("128S", img_size=288, fused=True)
    load_checkpoint(target, source.state_dict())
    old = source.stages[0].blocks[0].attn.attention_biases.detach()          # 14x14 grid
    new = target.stages[0].blocks[0].attn.attention_biases.detach()          # 18x18 grid
    assert new.shape == (old.shape[0], 18 * 18)
    # offset (0, 0) and the farthest offset keep their learned values exactly
    torch.testing.assert_close(new[:, 0], old[:, 0])
    torch.testing.assert_close(new[:, -1], old[:, -1])
    with torch.no_grad():
        assert torch.isfinite(target.eval()(torch.randn(1, 3, 288, 288))).all()
    # a table already at the target size is unchanged
    table = torch.randn(3, 49)
    torch.testing.assert_close(resize_attention_biases(table, (7, 7), (7, 7)), table)


def test_cache_is_never_stale():
    plain, fused = pair()
    images = torch.randn(2, 3, 224, 224)

    def check():
        with torch.no_grad():
            assert rel_err(fused(images), plain.eval()(images)) <= 1e-5

    check()
    with torch.no_grad():                               # in-place edits, several kinds
        for model in (plain, fused):
            model.stages[0].blocks[0].attn.attention_biases.add_(1.0)
            model.stages[1].blocks[0].mlp.ln1.bn.running_var.mul_(2.0)
            model.head.linear.weight.mul_(-1.0)
    check()
    other = randomize_(LeViT("128S"))                    # load_state_dict and load_checkpoint
    plain.load_state_dict(other.state_dict())
    fused.load_state_dict(other.state_dict())
    check()
    other = randomize_(LeViT("128S"))
    load_checkpoint(plain, other.state_dict())
    load_checkpoint(fused, other.state_dict())
    check()
    fused.train()                                       # train mode runs the plain path
    fused.eval()
    check()
    for model in (plain, fused):                        # .to(): edit in float64, come back
        model.double()
        with torch.no_grad():
            model.stages[2].blocks[0].attn.proj.ln.linear.weight.mul_(0.5)
        model.float()
    check()
    with torch.no_grad():                               # assigning .data replaces storage
        w = fused.stages[0].blocks[1].mlp.ln2.linear.weight
        w.data = w.data * 3
        plain.stages[0].blocks[1].mlp.ln2.linear.weight.data *= 3
    check()


def test_training_mode_runs_plain_path_with_gradients():
    _, fused = pair()
    fused.train()
    out, out_dist = fused(torch.randn(2, 3, 224, 224))
    (out.sum() + out_dist.sum()).backward()
    assert fused.stages[0].blocks[0].attn.attention_biases.grad is not None


def test_deepcopy_and_features_only():
    plain, fused = pair(num_classes=0)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(copy.deepcopy(fused)(images), plain(images)) <= 1e-5


def test_torch_compile_fullgraph_same_logits():
    plain, fused = pair()
    images = torch.randn(2, 3, 224, 224)
    compiled = torch.compile(fused, fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(images), plain(images)) <= 1e-5


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "autocast"])
def test_torch_compile_on_cpu_runs_the_one_call_program(dtype):
    """Compiled on CPU, the fused forward is one op running the eager one-call program: the
    eager logits bit for bit, and no per-layer op in the graph (traced layer by layer, each op
    allocating its output, the compiled forward ran at 0.41-0.83x the eager one's speed)."""
    _, fused = pair()
    if dtype == "bfloat16":
        fused.bfloat16()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "autocast")
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module.graph)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(fused, backend=recording_backend, fullgraph=True)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad(), autocast:
        out = compiled(images)
        expected = fused(images)
    torch._dynamo.reset()
    assert out.dtype == expected.dtype == (torch.float32 if dtype == "float32" else torch.bfloat16)
    assert torch.equal(out, expected)
    levit_ops = [str(node.target) for graph in graphs for node in graph.nodes
                 if node.op == "call_function" and str(node.target).startswith("levit.")]
    assert levit_ops in (["levit.fused_program"], ["levit.fused_program.default"])


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
def test_fused_program_op_called_raw_checks_what_a_graph_would_pass():
    """levit::fused_program is registered, so callable by hand: arguments a compiled graph
    would never pass are refused, not run (uint8 images converted, or logits that are not
    the shape its fake implementation promised)."""
    plain, fused = pair()
    op, model_id = torch.ops.levit.fused_program, fused._registry_id
    generation = fused._plan.key.generation
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(op(images, model_id, generation, 1000, torch.float32),
                       plain(images)) <= 1e-5
        for out_features, dtype in ((7, torch.float32), (1000, torch.bfloat16)):
            with pytest.raises(ValueError, match="out_features, dtype: expected the plan's 1000"):
                op(images, model_id, generation, out_features, dtype)
        for wrong in (torch.uint8, torch.float64, torch.bfloat16):
            with pytest.raises(TypeError, match="images: expected torch.float32"):
                op(images.to(wrong), model_id, generation, 1000, torch.float32)
        with pytest.raises(ValueError, match=r"images: expected shape \(B, 3, 224, 224\)"):
            op(images[:, :, :112], model_id, generation, 1000, torch.float32)
        with pytest.raises(RuntimeError, match="no longer exists"):
            op(images, model_id + 1, generation, 1000, torch.float32)


def _storage_bytes(objects) -> int:
    """Bytes of the distinct tensor storages reachable from `objects` through the attributes
    of levit_kernels' own classes, lists, tuples and dicts."""
    seen, storages, stack = set(), {}, list(objects)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif type(obj).__module__.startswith("levit_kernels") and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return sum(storages.values())


@pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
@pytest.mark.parametrize("variant", ["LeViT-128S", "LeViT-256"])
def test_a_packed_plan_holds_the_weights_once(variant):
    """A CPU plan keeps its folded weights packed, once: its layers (all but the program's
X: an unpacked copy was kept
    beside the packed one, and each MLP's weights were packed twice."""
    _, fused = pair(variant)                         # eval() built the plan
    plan = fused._plan
    assert plan.program is not None
    parameter_bytes = sum(p.numel() * p.element_size() for p in fused.parameters())
    assert _storage_bytes(plan.stem + plan.layers + [plan.head]) <= 1.15 * parameter_bytes


# ---- staleness cases test_cache_is_never_stale does not reach ------------------------------
def test_cache_after_a_training_forward():
    """A training-mode forward updates every BatchNorm's running statistics in place; the
    next eval-mode forward must fold the new statistics, not the ones cached before."""
    plain, fused = pair()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fused(images)                                   # cache the plan
        batch = 2 * torch.randn(4, 3, 224, 224) + 1
        for model in (plain, fused):
            model.train()(batch)
            model.eval()
        assert rel_err(fused(images), plain(images)) <= 1e-5


def _replace_head(model):
    from levit_kernels.model.levit import NormLinear
    g = torch.Generator().manual_seed(5)
    head = randomize_(NormLinear(model.head.linear.in_features, 1000), g).eval()
    model.head = head


def _replace_parameter(model):
    weight = model.stages[1].blocks[0].mlp.ln1.linear.weight
    model.stages[1].blocks[0].mlp.ln1.linear.weight = torch.nn.Parameter(
        weight.detach() * torch.linspace(-1, 1, weight.shape[1]))


def _edit_through_data(model):
    model.head.linear.weight.data.mul_(-1.0)
    model.stages[0].blocks[0].attn.attention_biases.data.add_(
        torch.linspace(0, 3, model.stages[0].blocks[0].attn.attention_biases.shape[-1]))


@pytest.mark.parametrize("edit", [_replace_head, _replace_parameter],
                         ids=["submodule", "parameter"])
def test_cache_after_replacements(edit):
    plain, fused = pair()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fused(images)                                   # cache the plan
        edit(plain)
        edit(fused)
        assert rel_err(fused(images), plain(images)) <= 1e-5


def test_edits_through_data_need_refresh_fused():
    """`p.data.mul_(...)` edits a parameter without bumping its version counter (`.data` has a
    counter of its own), so no cheap key can see it: the documented remedy is
    model.refresh_fused(), which must then give the edited model's logits."""
    plain, fused = pair()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fused(images)                                   # cache the plan
        _edit_through_data(plain)
        _edit_through_data(fused)
        fused.refresh_fused()
        assert rel_err(fused(images), plain(images)) <= 1e-5


def test_pickled_model_builds_its_own_plan(tmp_path):
    """torch.save of the whole model (not just its state dict) drops the derived plan."""
    plain, fused = pair()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fused(images)
        torch.save(fused, tmp_path / "model.pt")
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
        assert rel_err(loaded(images), plain(images)) <= 1e-5
