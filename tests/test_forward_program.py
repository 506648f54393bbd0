"""cpu.ForwardProgram: the whole fused CPU forward as one C++ call (csrc/forward.h).

The fused model runs it for eager forwards (and, as the one op levit::fused_program, under
torch.compile); the launchers run the same layers one op at a time. Both must agree with each
other and with the plain model, at every batch size (batches
run in chunks of 16 images through one workspace), any image strides, and every layer shape
the variants and ablations have.
"""
import threading
import time

import pytest
import torch

from levit_kernels import LeViT, cpu
from levit_kernels.model import multiply_adds
from levit_kernels.model.levit import slot_offsets
from levit_kernels.model.plan import FusedPlan, Launchers

from levit_testing import randomize_

pytestmark = [pytest.mark.forward_program,
              pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def model_and_plan(variant="LeViT-128S", **kwargs):
    model = randomize_(LeViT(variant, fused=True, **kwargs)).eval()   # eval() builds the plan
    plan = model._plan
    assert plan.program is not None
    return model, plan


def layer_by_layer(plan, images):
    """The same plan run by the launchers backend: one launcher call per layer."""
    with torch.no_grad():
        return Launchers(plan.device).run(plan, images)


@pytest.mark.parametrize("variant,kwargs", [
    ("LeViT-128S", {}), ("LeViT-256", {}),                     # D 16 and D 32, three stages
    ("LeViT-A1", {}), ("LeViT-A6", {}),                        # one stage; D = Dv = 64
    ("LeViT-128S", {"img_size": (224, 320)}),                  # a non-square token grid
    ("LeViT-128S", {"img_size": 200}),                         # odd grids: 13x13, 7x7, 4x4
    ("LeViT-128S", {"num_classes": 0}),                        # pooled features, no head
    ("LeViT-128S", {"distillation": False}),
])
def test_program_matches_layer_by_layer_and_plain(variant, kwargs):
    model, plan = model_and_plan(variant, **kwargs)
    plain = LeViT(variant, **kwargs).eval()
    plain.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, *model.img_size)
    with torch.no_grad():
        out = plan.program(images)
        expected = plain(images)
    assert out.shape == expected.shape
    assert rel_err(out, layer_by_layer(plan, images)) <= 1e-5
    assert rel_err(out, expected) <= 1e-5


@pytest.mark.parametrize("batch", [1, 15, 16, 17, 33])
def test_batches_across_chunk_boundaries(batch):
    """Each image's logits do not depend on the batch it came in (chunks of 16)."""
    _, plan = model_and_plan()
    images = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        out = plan.program(images)
        alone = torch.cat([plan.program(images[i:i + 1]) for i in range(batch)])
    assert out.shape == (batch, 1000)
    assert rel_err(out, alone) <= 1e-6
    assert rel_err(out, layer_by_layer(plan, images)) <= 1e-5


@pytest.mark.parametrize("layout", ["channels_last", "strided", "expanded", "column_stride",
                                    "channel_slice"])
def test_images_of_any_strides(layout):
    """Contiguous NCHW RGB images take the pad step's pixel-by-pixel loop (csrc/conv.cpp
    interleave_rgb_row), channels_last a row copy, a column stride the general channel loop:
    all give the same logits."""
    _, plan = model_and_plan()
    base = torch.randn(3, 3, 224, 224)
    images = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": torch.randn(6, 3, 224, 224)[::2],
        "expanded": base[:1].expand(3, 3, 224, 224),
        "column_stride": torch.randn(3, 3, 224, 448)[..., ::2],
        "channel_slice": torch.randn(3, 5, 224, 224)[:, 1:4],
    }[layout]
    with torch.no_grad():
        assert torch.equal(plan.program(images), plan.program(images.contiguous()))


def test_empty_batch():
    _, plan = model_and_plan()
    assert plan.program(torch.zeros(0, 3, 224, 224)).shape == (0, 1000)


def test_workspace_is_kept_and_reused():
    _, plan = model_and_plan()
    images = torch.randn(20, 3, 224, 224)
    with torch.no_grad():
        first = plan.program(images)
        workspace = plan.program._workspace.data_ptr()
        assert torch.equal(plan.program(images), first)
        plan.program(images[:3])                             # smaller: same buffer
    assert plan.program._workspace.data_ptr() == workspace


def test_a_second_thread_gets_its_own_workspace():
    """A call that finds the kept workspace in use must not share it."""
    _, plan = model_and_plan()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = plan.program(images)
        plan.program._workspace_lock.acquire()           # as if another thread were running
        try:
            result = [None]
            thread = threading.Thread(target=lambda: result.__setitem__(0, plan.program(images)))
            thread.start()
            thread.join(timeout=60)
        finally:
            plan.program._workspace_lock.release()
    assert not thread.is_alive()
    assert torch.equal(result[0], expected)


# -- profile(): each step of the forward timed ------------------------------------------------
STEP_KINDS = {"convolution", "gemm", "attention", "mlp", "copy"}


@pytest.mark.parametrize("variant,dtype", [("LeViT-128S", torch.float32),
                                           ("LeViT-256", torch.bfloat16)])
def test_profile_times_every_step_and_counts_the_model_s_multiply_adds(variant, dtype):
    """The profiled forward is the forward (bit for bit), its steps are the model's layers in
    order, and their flops add up to the paper's multiply-add count (which counts one more
    per softmax entry and no classifier: together < 0.5% of it)."""
    model, _ = model_and_plan(variant)
    program = FusedPlan(model, torch.device("cpu"), dtype).program
    images = torch.randn(2, 3, 224, 224).to(dtype)
    start = time.perf_counter()
    out, steps = program.profile(images)
    wall = time.perf_counter() - start
    assert torch.equal(out, program(images))
    names = [s["step"] for s in steps]
    assert len(set(names)) == len(names)
    assert {s["kind"] for s in steps} == STEP_KINDS
    config = model.config
    assert sum(s["kind"] == "convolution" for s in steps) == 4
    assert sum(s["kind"] == "mlp" for s in steps) == sum(config.depth) + len(config.depth) - 1
    assert sum(s["kind"] == "attention" for s in steps) == sum(config.depth) + len(config.depth) - 1
    assert names[0].startswith("stem: images") and names[-1].startswith("head (")
    assert all(s["seconds"] > 0 for s in steps)
    assert sum(s["seconds"] for s in steps) <= wall
    macs = sum(s["flops"] for s in steps) / 2 / images.shape[0]
    assert abs(macs - multiply_adds(config)) <= 0.005 * multiply_adds(config)


def test_profile_adds_up_images_and_chunks():
    """Batch 17 is a chunk of 16 and one of 1, each stem image by image: every step appears
    once, with 17 times one image's flops; without a head the last step is the mean."""
    model, plan = model_and_plan(img_size=64, num_classes=0)
    images = torch.randn(17, 3, 64, 64)
    one = plan.program.profile(images[:1])[1]
    out, steps = plan.program.profile(images)
    assert torch.equal(out, plan.program(images))
    assert [s["step"] for s in steps] == [s["step"] for s in one]
    assert [s["flops"] for s in steps] == [17 * s["flops"] for s in one]
    assert steps[-1]["step"] == "mean over tokens"


def test_profile_of_an_empty_batch():
    _, plan = model_and_plan()
    out, steps = plan.program.profile(torch.zeros(0, 3, 224, 224))
    assert out.shape == (0, 1000) and steps == []


@pytest.mark.parametrize("images,exc,match", [
    (torch.zeros(1, 3, 224, 224, dtype=torch.float64), TypeError, "images: expected dtype"),
    (torch.zeros(1, 4, 224, 224), ValueError, r"images: expected shape \(B, 3, 224, 224\)"),
    (torch.zeros(1, 3, 224, 200), ValueError, r"images: expected shape \(B, 3, 224, 224\)"),
    (torch.zeros(3, 224, 224), ValueError, "images: expected 4 dimensions"),
    ("not a tensor", TypeError, "images: expected a torch.Tensor"),
])
def test_bad_images(images, exc, match):
    _, plan = model_and_plan()
    with pytest.raises(exc, match=match):
        plan.program(images)
    with pytest.raises(exc, match=match):
        plan.program.profile(images)


# ---- building a program: each layer must fit the ones before it ---------------------------
def stem():
    program = cpu.ForwardProgram(3, 32, 32)
    program.add_conv(cpu.PackedConv(torch.randn(8, 3, 3, 3), torch.randn(8), 2, 1), "hardswish")
    return program                                          # 16x16 tokens of width 8


def linear(n_in, n_out):
    return cpu.PackedLinear(torch.randn(n_out, n_in), torch.randn(n_out))


SELF_SLOT = slot_offsets({"q": 4, "k": 4, "v": 8})   # LeViT's [q | k | v] with Dk 4, Dv 8


def test_conv_with_the_wrong_input_channels():
    program = stem()
    with pytest.raises(ValueError, match="conv: expected 8 input channels, got 3"):
        program.add_conv(cpu.PackedConv(torch.randn(8, 3, 3, 3), None, 2, 1), "none")


def test_conv_after_token_layers():
    program = stem()
    program.add_mlp(cpu.PackedMlp(torch.randn(16, 8), torch.randn(16), torch.randn(8, 16),
                                  torch.randn(8)))
    with pytest.raises(ValueError, match="before the token layers"):
        program.add_conv(cpu.PackedConv(torch.randn(8, 8, 3, 3), None, 2, 1), "none")


def test_token_layers_need_the_stem():
    program = cpu.ForwardProgram(3, 32, 32)
    with pytest.raises(ValueError, match="the stem must come first"):
        program.add_mlp(cpu.PackedMlp(torch.randn(6, 3), torch.randn(6), torch.randn(3, 6),
                                      torch.randn(3)))


def test_mlp_of_the_wrong_width():
    program = stem()
    with pytest.raises(ValueError, match="mlp: expected 8 channels, got 4"):
        program.add_mlp(cpu.PackedMlp(torch.randn(16, 4), torch.randn(16), torch.randn(4, 16),
                                      torch.randn(4)))


@pytest.mark.parametrize("part,match", [
    ("qkv_in", "qkv: expected 8 features here, got 4"),
    ("qkv_out", "qkv: expected 32 features here, got 24"),
    ("proj", "proj: expected 16 features here, got 8"),
    ("bias", r"bias: expected shape \(H=2, Nq=256, Nk=256\) for the 16x16 token grid"),
])
def test_attention_that_does_not_fit(part, match):
    heads, dk, dv = 2, 4, 8                       # qkv: 2 * (4 + 4 + 8) = 32, proj in: 16
    qkv = linear(4 if part == "qkv_in" else 8, 24 if part == "qkv_out" else 32)
    proj = linear(8 if part == "proj" else 16, 8)
    bias = torch.randn(heads, 256, 255 if part == "bias" else 256)
    with pytest.raises(ValueError, match=match):
        stem().add_attention(qkv, proj, bias, heads, dk, dv, 0.5, SELF_SLOT)


@pytest.mark.parametrize("offsets,match", [
    ({"q": 0, "k": 4}, r"offsets: expected the offsets of \['k', 'q', 'v'\]"),
    ({"q": 0, "k": 4, "v": 9}, "q, k and v must lie inside each head's slot of 16 channels"),
    ({"q": -1, "k": 4, "v": 8}, r"offsets\['q'\]: expected an int >= 0"),
    ({"q": 0, "k": 4.0, "v": 8}, r"offsets\['k'\]: expected an int >= 0"),
])
def test_attention_slot_offsets_are_checked(offsets, match):
    with pytest.raises(ValueError, match=match):
        stem().add_attention(linear(8, 32), linear(16, 8), torch.randn(2, 256, 256), 2, 4, 8,
                             0.5, offsets)


def test_shrinking_attention_needs_q():
    with pytest.raises(ValueError, match="q: shrinking attention"):
        stem().add_attention(linear(8, 24), linear(16, 12), torch.randn(2, 64, 256), 2, 4, 8,
                             0.5, {"k": 0, "v": 4}, subsample=2)


def test_head_of_the_wrong_width():
    with pytest.raises(ValueError, match="head: expected 8 input features, got 5"):
        stem().set_head(linear(5, 10))


def test_the_cpp_program_checks_the_head_width_itself():
    """The C++ Program, not only its Python wrapper: it reads in_features floats per token."""
    program = stem()._program
    head = linear(5, 10)
    with pytest.raises(ValueError, match="head: expected 8 input features, got 5"):
        program.set_head(packed=head.packed.data_ptr(), bias=head.bias.data_ptr(),
                         in_features=5, classes=10)


@pytest.mark.parametrize("after", ["mlp", "conv", "attention", "head"])
def test_nothing_comes_after_the_head(after):
    program = stem()
    program.set_head(linear(8, 10))
    add = {
        "mlp": lambda: program.add_mlp(cpu.PackedMlp(torch.randn(16, 8), torch.randn(16),
                                                     torch.randn(8, 16), torch.randn(8))),
        "conv": lambda: program.add_conv(cpu.PackedConv(torch.randn(8, 8, 3, 3), None, 2, 1),
                                         "none"),
        "attention": lambda: program.add_attention(linear(8, 32), linear(16, 8),
                                                   torch.randn(2, 256, 256), 2, 4, 8, 0.5,
                                                   SELF_SLOT),
        "head": lambda: program.set_head(linear(8, 3)),
    }[after]
    with pytest.raises(ValueError, match=f"^{after}: the head is already set"):
        add()
    assert program.output_features == 10


def test_stem_kernel_rows_shorter_and_longer_than_a_k_block():
    """The stem's convolutions read their kernel rows in place as K segments: summed in
    registers when each row fits one K block (LeViT's: 9 to 192 values), block by block
    through the output when one does not (96 channels x 3 = 288 values a row). Both against
    F.conv2d in float64."""
    torch.manual_seed(0)
    layers = [(3, 16, 2), (16, 96, 1), (96, 8, 2)]      # (cin, cout, stride), 3x3, padding 1
    program = cpu.ForwardProgram(3, 20, 20)
    images = torch.randn(2, 3, 20, 20)
    expected = images.double()
    for i, (cin, cout, stride) in enumerate(layers):
        w, b = torch.randn(cout, cin, 3, 3) / (3 * cin ** 0.5), torch.randn(cout)
        last = i == len(layers) - 1
        program.add_conv(cpu.PackedConv(w, b, stride, 1), "none" if last else "hardswish")
        expected = torch.nn.functional.conv2d(expected, w.double(), b.double(), stride, 1)
        expected = expected if last else torch.nn.functional.hardswish(expected)
    assert rel_err(program(images).double(), expected.mean(dim=(2, 3))) <= 1e-5


def test_a_hand_built_program_equals_the_launchers():
    """A small program of every layer kind against the same layers called one by one."""
    torch.manual_seed(0)
    conv = cpu.PackedConv(torch.randn(8, 3, 3, 3) / 5, torch.randn(8), 2, 1)
    heads, dk, dv = 2, 4, 8
    qkv, proj = linear(8, heads * (2 * dk + dv)), linear(heads * dv, 8)
    kv, q, proj2 = linear(8, heads * (dk + dv)), linear(8, heads * dk), linear(heads * dv, 12)
    mlp = cpu.PackedMlp(torch.randn(24, 12) / 4, torch.randn(24), torch.randn(12, 24) / 5,
                        torch.randn(12))
    head = linear(12, 5)
    bias_self, bias_shrink = torch.randn(heads, 256, 256), torch.randn(heads, 64, 256)
    program = cpu.ForwardProgram(3, 32, 32)
    program.add_conv(conv, "hardswish")
    # Slots in another order than LeViT's ([v | q | k] and [v | k]): the program must take
    # the offsets it is given.
    program.add_attention(qkv, proj, bias_self, heads, dk, dv, 0.5,
                          {"v": 0, "q": dv, "k": dv + dk})
    program.add_attention(kv, proj2, bias_shrink, heads, dk, dv, 0.5, {"v": 0, "k": dv}, q=q,
                          subsample=2)
    program.add_mlp(mlp)
    program.set_head(head)

    images = torch.randn(3, 3, 32, 32)
    x = conv(images.permute(0, 2, 3, 1), "hardswish").reshape(3, 256, 8)
    t = qkv(x).view(3, 256, heads, 2 * dk + dv).permute(0, 2, 1, 3)
    a = cpu.attention(t[..., dv:dv + dk], t[..., dv + dk:], t[..., :dv], bias_self, 0.5, True)
    x = proj(a, residual=x)
    t = kv(x).view(3, 256, heads, dk + dv).permute(0, 2, 1, 3)
    x_sub = x.view(3, 16, 16, 8)[:, ::2, ::2].reshape(3, 64, 8)
    q_sub = q(x_sub).view(3, 64, heads, dk).permute(0, 2, 1, 3)
    x = proj2(cpu.attention(q_sub, t[..., dv:], t[..., :dv], bias_shrink, 0.5, True))
    expected = head(mlp(x).mean(dim=1))
    assert rel_err(program(images), expected) <= 1e-5
