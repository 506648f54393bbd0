"""The fused model's CUDA branch, end to end, without a GPU.

`model.use_kernels("gpu")` builds the plan a CUDA device gets (NCHW images read in place by
the Triton stem convolutions, NHWC tokens, padded attention biases, every layer through
model/gpu_backend.py and the ops/gpu launchers) and runs it on CPU tensors under
TRITON_INTERPRET=1. The whole `LeViT(fused=True)` forward must equal the plain model: float32
within 1e-5 of the float64 reference's largest logit, float16 by flash-attention's rule against
plain PyTorch run in float16. The model is a LeViT with one block per stage (the interpreter
runs a full-depth variant's forward in minutes) at 64 pixels: 16, 4 and 1 tokens per stage,
both shrinking attentions (the second subsamples a 2x2 grid through strides), the fused MLP
(C = 64) and the two-GEMM MLP (C = 160, 192), the Triton stem reading float32 images for a
float16 plan. On a GPU the same tests run the real CUDA path.
"""
import os

import pytest
import torch

import levit_kernels
from levit_kernels.model import plan as plan_module
from levit_kernels.model.config import LeViTConfig

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = [
    pytest.mark.skipif(not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="no CUDA and TRITON_INTERPRET is not 1"),
    pytest.mark.attention, pytest.mark.linear, pytest.mark.mlp, pytest.mark.conv2d]
VARIANT = LeViTConfig("LeViT-test", embed_dim=(64, 160, 192), key_dim=16, num_heads=(2, 4, 4),
                      depth=(1, 1, 1))
IMG, BATCH = 64, 2


def _models():
    """A plain model with non-trivial BatchNorm statistics and its fused twin."""
    torch.manual_seed(0)
    ref = levit_kernels.LeViT(VARIANT, img_size=IMG, num_classes=10).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    fused = levit_kernels.LeViT(VARIANT, img_size=IMG, num_classes=10, fused=True)
    fused.load_state_dict(ref.state_dict())
    return ref, fused.eval().use_kernels("gpu")


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.fixture
def launches(monkeypatch):
    """Names of the Triton kernels launched, in order."""
    from levit_kernels.ops.gpu import common
    names = []
    run = common.RUNTIME.run

    def recording(kernel, grid, args, kwargs):
        names.append(getattr(kernel, "fn", kernel).__name__)
        run(kernel, grid, args, kwargs)

    monkeypatch.setattr(common.RUNTIME, "run", recording)
    return names


def test_float32_forward_equals_the_reference(models, launches):
    ref, fused = models
    images = torch.randn(BATCH, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.double()(images.double())
        ref.float()
        out = fused.to(DEVICE)(images.to(DEVICE))
    assert out.dtype == torch.float32 and out.shape == (BATCH, 10)
    plan = fused._plan
    assert plan.kernels == "gpu" and plan.program is None
    assert type(plan.backend).__name__ == "GpuLaunchers"
    err = (out.cpu().double() - expected).abs().max() / expected.abs().max()
    assert err <= 1e-5, err
    # every layer ran on a Triton kernel: 4 convs, per attention block qkv / attention /
    # projection (+ the query projection of the 2 shrinking ones), per MLP one fused kernel
    # (C = 128) or two GEMMs, the head
    cfg = VARIANT
    blocks = sum(cfg.depth) + 2
    mlps_two = cfg.depth[1] + cfg.depth[2] + 2
    assert launches.count("_conv2d_kernel") == 4
    assert launches.count("_attention_kernel") == blocks
    assert launches.count("_mlp_fused_kernel") == cfg.depth[0]
    linears = 2 * blocks + 2 + 2 * mlps_two + 1
    assert launches.count("_linear_kernel") == linears
    assert len(launches) == 4 + blocks + cfg.depth[0] + linears


def test_float16_forward_within_twice_torch_float16_error(models):
    ref, fused = models
    images = torch.randn(BATCH, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref32 = ref.float()(images)
        torch16 = ref.half().to(DEVICE)(images.half().to(DEVICE)).float().cpu()
        ref.float()
        out = fused.half().to(DEVICE)(images.to(DEVICE))     # float32 images, cast on load
        fused.float()
    assert out.dtype == torch.float16
    err = (out.float().cpu() - ref32).abs().max().item()
    torch_err = (torch16 - ref32).abs().max().item()
    slack = 4 * torch.finfo(torch.float16).eps * ref32.abs().max().item()
    assert err <= 2 * torch_err + slack, (err, torch_err)


def test_a_frozen_snapshot_runs_the_same_triton_forward(models):
    """levit_kernels.freeze() of the fused model keeps its kernels (use_kernels("gpu") here,
    the device's own on CUDA): the same logits, in float32, and in a float16 snapshot of the
    float32 model (folded in float32, rounded once: what the model runs under autocast)."""
    ref, fused = models
    images = torch.randn(BATCH, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))
    images = images.to(DEVICE)
    fused.float().to(DEVICE)
    frozen = levit_kernels.freeze(fused)
    frozen16 = levit_kernels.freeze(fused, torch.float16)
    with torch.no_grad():
        expected = fused(images)
        with torch.autocast(DEVICE, dtype=torch.float16):
            expected16 = fused(images)
    assert torch.equal(frozen(images), expected)
    assert type(frozen._plan.backend).__name__ == "GpuLaunchers"
    out16 = frozen16(images)
    assert out16.dtype == torch.float16 and torch.equal(out16, expected16)


def test_shapes_are_validated_once_per_input_shape(models, monkeypatch):
    """Later forwards of a shape skip the launchers' input checks (plan-level validation)."""
    from levit_kernels.ops import checks
    ref, fused = models
    calls = []
    check_linear = checks.check_linear
    monkeypatch.setattr(checks, "check_linear",
                        lambda *a, **k: calls.append(1) or check_linear(*a, **k))
    fused.float().to(DEVICE)
    images = torch.randn(1, 3, IMG, IMG).to(DEVICE)
    with torch.no_grad():
        first = fused(images)
        n_first = len(calls)
        second = fused(images)
    assert n_first > 0 and len(calls) == n_first
    assert torch.equal(first, second)


def test_gpu_plans_pad_attention_bias_rows():
    ref = levit_kernels.LeViT("LeViT-256", num_classes=0).eval()
    plan = plan_module.FusedPlan(ref, torch.device("cpu"), torch.float32, kernels="gpu")
    biases = [layer.bias for layer in plan.layers if hasattr(layer, "bias")]
    assert {b.shape[-1] for b in biases} >= {196, 49, 16}
    for bias in biases:
        assert bias.stride(-2) % 16 == 0 and bias.stride(-1) == 1
        torch.testing.assert_close(bias, bias.contiguous())


def test_use_kernels_rejects_unknown_families():
    model = levit_kernels.LeViT("LeViT-128S", fused=True)
    with pytest.raises(ValueError, match="^kernels:"):
        model.use_kernels("tpu")


@pytest.mark.skipif(CUDA, reason="the Triton interpreter's dtypes: a machine without CUDA")
def test_bfloat16_under_the_interpreter_runs_the_plain_layers(models, monkeypatch):
    """The interpreter has no bfloat16 arithmetic: the launchers returned float bit patterns
    read as integers (logits off by 1e10). A bf16 model asking for them gets the plain layers,
    with a warning, and the launchers refuse bf16 CPU tensors naming the argument."""
    from levit_kernels import gpu
    from levit_kernels.model import fused as fused_module
    monkeypatch.setattr(fused_module, "_warned", set())     # warnings come once per process
    ref, fused = models
    images = torch.randn(BATCH, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))
    try:
        with torch.no_grad(), pytest.warns(RuntimeWarning, match="plain PyTorch path"):
            out = fused.bfloat16()(images.bfloat16())
        with torch.no_grad():
            want = ref.bfloat16()(images.bfloat16())
    finally:
        ref.float(), fused.float()
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"^x\b.*float16.*float32"):
        gpu.linear(x, torch.randn(4, 8, dtype=torch.bfloat16))
