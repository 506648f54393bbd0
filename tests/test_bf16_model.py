"""bfloat16 on CPU, above the kernels: one dtype per call, the registered ops (opcheck,
torch.compile), the one-call forward and the model, and how the path is chosen.

The model's rule: the relative L2 error of its logits against the float64 plain model is at
most 1.5x that of the plain model run by PyTorch in bf16 (`.bfloat16()`, or autocast for
autocast) on the same weights and images (the issue's bar is 1.5x OpenVINO-bf16's; plain
PyTorch in bf16 is the yardstick every machine has), and where an image's top-1 logit leads
by more than twice the largest logit error, its top-1 must be float64's. The kernels' rule:
tests/test_bf16_kernels.py.
"""
import os
import subprocess
import sys

import pytest
import torch

from levit_kernels import LeViT, cpu, ops
from levit_testing import op_params, qkv_bf16 as qkv, randn_bf16 as randn, randomize_

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
BF16 = torch.bfloat16


# ---------------------------------------------------------------- one dtype per call
@pytest.mark.linear
@pytest.mark.mlp
@pytest.mark.attention
@pytest.mark.conv2d
def test_mixed_dtypes_name_the_argument():
    x, w, b = randn(5, 8), randn(3, 8), randn(3)
    with pytest.raises(TypeError, match=r"^weight\b.*bfloat16.*float32"):
        ops.linear(x, w.float(), b)
    with pytest.raises(TypeError, match=r"^bias\b.*bfloat16.*float32"):
        ops.linear(x, w, b.float())
    with pytest.raises(TypeError, match=r"^packed_weight\b.*float32.*bfloat16"):
        ops.linear_packed(x.float(), cpu.pack_weight(w), 3)
    with pytest.raises(TypeError, match=r"^residual\b"):
        ops.linear(x, w, b, torch.zeros(5, 3))
    with pytest.raises(TypeError, match=r"^w2_packed\b"):
        ops.mlp_packed(randn(2, 3), cpu.pack_weight(randn(4, 3)), randn(4),
                       cpu.pack_weight(torch.randn(3, 4)), randn(3))
    q, k, v = qkv(1, 2, 4, 4, 8, 8)
    with pytest.raises(TypeError, match=r"^v\b.*bfloat16.*float32"):
        ops.attention(q, k, v.float(), randn(2, 4, 4), 0.5)
    with pytest.raises(TypeError, match=r"^bias\b"):
        ops.attention_probs(q, k, torch.zeros(2, 4, 4), 0.5)
    with pytest.raises(TypeError, match=r"^packed\b.*float32.*bfloat16"):
        ops.conv2d_packed(torch.zeros(1, 5, 5, 3), cpu.pack_conv_weight(randn(4, 3, 3, 3)), 4, 3)


# ---------------------------------------------------------------- registered ops
@pytest.mark.parametrize("op, args", op_params(dtype=BF16))
def test_opcheck_bf16(op, args):
    torch.library.opcheck(op, args)
    assert op(*args).dtype == BF16


@pytest.mark.attention
@pytest.mark.linear
def test_compile_fullgraph_bf16():
    q, k, v = qkv(2, 4, 16, 16, 16, 32)
    bias = randn(4, 16, 16)
    w, b = randn(48, 128), randn(48)
    packed = cpu.pack_weight(w)

    def block(q, k, v, bias):
        a = ops.attention(q, k, v, bias, 0.25, True)
        return ops.linear_packed(a, packed, 48, b, None, "hardswish")

    compiled = torch.compile(block, fullgraph=True)
    out = compiled(q, k, v, bias)
    assert out.dtype == BF16 and torch.equal(out, block(q, k, v, bias))


# ---------------------------------------------------------------- the model
def models(variant="LeViT-128S", **kwargs):
    plain = randomize_(LeViT(variant, **kwargs), torch.Generator().manual_seed(0)).eval()
    fused = LeViT(variant, fused=True, **kwargs)
    fused.load_state_dict(plain.state_dict())
    return plain, fused.eval()


def rel_l2(out, exact):
    return ((out.double() - exact).norm() / exact.norm()).item()


def assert_top1_kept(out, exact):
    """Where an image's top-1 logit leads the runner-up by more than twice the largest logit
    error, no error of that size can change the argmax: the top-1 must be float64's there."""
    top2 = exact.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    err = (out.double() - exact).abs().amax(dim=-1)
    sure = margin > 2 * err
    assert (out.double().argmax(-1) == exact.argmax(-1))[sure].all()


@pytest.mark.forward_program
def test_model_bf16_and_autocast():
    """.bfloat16() and autocast both run the bf16 kernels (the program), as accurate as plain
    PyTorch in bf16 (<= 1.5x its relative L2 logit error vs float64), the top-1 kept wherever
    the error cannot flip it; float32 or bf16 images give the same logits."""
    plain, fused = models(img_size=160)
    images = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = plain.double()(images.double())
        plain.float()
        with torch.autocast("cpu", dtype=BF16):
            plain_amp, fused_amp = plain(images), fused(images)
        assert fused._plan.dtype == BF16 and fused._plan.program.dtype == BF16
        plain_bf16 = plain.bfloat16()(images.bfloat16())
        fused.bfloat16()
        assert fused._plan.dtype == BF16     # eval-mode .to() rebuilt the plan in bf16
        out = fused(images)                  # float32 images into a bf16 model
        assert torch.equal(fused(images.bfloat16()), out)
    assert fused_amp.dtype == plain_amp.dtype == BF16 and out.dtype == BF16
    for got, yardstick in ((out, plain_bf16), (fused_amp, plain_amp)):
        assert rel_l2(got, exact) <= 1.5 * rel_l2(yardstick, exact), \
            (rel_l2(got, exact), rel_l2(yardstick, exact))
        assert_top1_kept(got, exact)


@pytest.mark.forward_program
def test_program_matches_layer_by_layer():
    """The one-call bf16 program against the same plan run one launcher at a time (which the
    kernel tests above check op by op), across a chunk boundary (17 images): equal up to a
    few bf16 roundings."""
    from levit_kernels.model.plan import Launchers
    _, fused = models()
    fused.bfloat16()
    plan = fused._plan
    images = torch.randn(17, 3, 224, 224).bfloat16()
    with torch.no_grad():
        out, layers = plan.program(images), Launchers(plan.device).run(plan, images)
    assert out.dtype == layers.dtype == BF16
    assert rel_l2(out, layers.double()) <= 2 ** -6


def test_program_rejects_other_dtypes():
    _, fused = models(img_size=64)
    fused.bfloat16()
    with pytest.raises(TypeError, match="images: expected dtype torch.bfloat16"):
        fused._plan.program(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="dtype"):
        cpu.ForwardProgram(3, 64, 64, dtype=torch.float16)


# ---------------------------------------------------------------- choosing the path
def _choice_under(value):
    """(isa, note, warning) that LEVIT_CPU_ISA=value gives, from the extension module loaded
    alone in a fresh process (it needs no torch: fast)."""
    code = ("import importlib.util as u, sys\n"
            "spec = u.spec_from_file_location('_C', sys.argv[1])\n"
            "C = u.module_from_spec(spec); spec.loader.exec_module(C)\n"
            "print(C.isa()); print(C.isa_note()); print(C.isa_warning())\n")
    from levit_kernels.ops import _C
    result = subprocess.run([sys.executable, "-c", code, _C.__file__], capture_output=True,
                            text=True, env=dict(os.environ, LEVIT_CPU_ISA=value), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")[:3]


def test_levit_cpu_isa_values():
    available = cpu.available_isas()
    for value in ("generic", " GENERIC ", "Generic"):      # case and spaces ignored
        assert _choice_under(value) == ["generic", f"LEVIT_CPU_ISA={value}", ""]
    for value in ("garbage", "avx-1024", "AVX2 please"):  # unknown: the best path, and why
        isa, note, warning = _choice_under(value)
        assert isa == available[0] and note == warning
        assert warning.startswith(f"LEVIT_CPU_ISA={value} is not one of generic|avx2|")
    missing = [n for n in ("amx_bf16", "avx512_bf16", "avx512", "avx2") if n not in available]
    for name in missing:                                 # unsupported here: the best, and why
        isa, note, warning = _choice_under(name.upper().replace("_", "-"))
        assert isa == available[0] and "lacks " + name in warning and note == warning


def test_an_ignored_levit_cpu_isa_warns_on_import():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", "import levit_kernels"], capture_output=True,
                            text=True, env=dict(os.environ, LEVIT_CPU_ISA="avx3"), cwd=root,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning: LEVIT_CPU_ISA=avx3 is not one of" in result.stderr


def test_info_names_both_paths(capsys):
    import levit_kernels
    facts = levit_kernels.info()
    assert facts["cpu bfloat16 path"].startswith(cpu.isa() + ":")
    assert facts["cpu float32 path"].startswith(cpu.isa() + ":")
    assert facts["cpu isa chosen by"] == cpu.isa_note()
    if cpu.isa() not in ("avx512_bf16", "amx_bf16"):
        assert "widened to float32" in facts["cpu bfloat16 path"]
