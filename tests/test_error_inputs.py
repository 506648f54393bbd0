"""Bad, empty and non-finite inputs to every public op.

Entry points: the registered ops (levit_kernels.ops), the CPU launchers (levit_kernels.cpu) and
the GPU launchers (levit_kernels.gpu; CPU tensors under TRITON_INTERPRET=1 when there is no
CUDA). The contract (issue 6):

* a bad call — wrong dtype, mixed devices, wrong rank, mismatched B/H/N/D, weight/bias/residual
  shapes that do not fit, a last dimension without unit stride, sizes past 32-bit indexing —
  raises TypeError/ValueError/RuntimeError whose message starts with the argument's name and
  says what was expected, before any output is allocated (sizes past 2**31 elements are built
  from stride-0 expanded tensors or meta tensors, and are so large that an implementation
  that allocated its output anyway would fail to allocate instead of filling the machine's
  memory);
* empty inputs (B = 0, N = 0, ...) give the reference's result, or a ValueError naming the
  size that must be >= 1;
* NaN and ±inf propagate exactly as in levit_kernels.reference: same NaN mask, same ±inf.

One table (CASES) drives the bad-input test: (op, builder of its arguments, exception type,
pattern the message must match with re.search).
"""
import functools
import math
import os
import re

import pytest
import torch

from levit_kernels import cpu, ops, reference

from levit_testing import CPU_ISAS, OP_FAMILY, using_isa

CUDA = torch.cuda.is_available()
GPU_OK = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
GPU_DEVICE = "cuda" if CUDA else "cpu"
if GPU_OK:
    from levit_kernels import gpu

needs_extension = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
needs_gpu = pytest.mark.skipif(not GPU_OK, reason="no CUDA and TRITON_INTERPRET is not 1")

# Small sizes, all different, so that a swapped dimension cannot go unnoticed.
B, H, NQ, NK, DK, DV = 2, 3, 7, 5, 4, 6
LEAD, K, N = (2, 5), 8, 6
C, CH = 8, 12

# Argument order of each op family (the same for ops.*, cpu.* and gpu.*).
SIGNATURES = {
    "attention": ("q", "k", "v", "bias", "scale", "hardswish"),
    "attention_probs": ("q", "k", "bias", "scale"),
    "linear": ("x", "weight", "bias", "residual", "activation"),
    "mlp": ("x", "w1", "b1", "w2", "b2"),
    "linear_packed": ("x", "packed_weight", "out_features", "bias", "residual", "activation"),
    "mlp_packed": ("x", "w1_packed", "b1", "w2_packed", "b2"),
    "pack_weight": ("weight",),
}
ALL = ("ops", "cpu", "gpu")
PACKED = ("ops", "cpu")     # linear_packed / mlp_packed: CPU only
# torch.ops.levit.* called directly: the schema's own conversions run before any wrapper
# could check (a bool passed for a float would arrive as 1.0), so some cases name it too.
REGISTERED = "registered"


def device_of(impl):
    return GPU_DEVICE if impl == "gpu" else "cpu"


def entry(impl, family):
    """The public function: levit_kernels.{ops,cpu,gpu}.<family>, or torch.ops.levit.<family>."""
    module = {"ops": ops, "cpu": cpu, REGISTERED: torch.ops.levit}.get(impl) or gpu
    return getattr(module, family)


def valid(family, device):
    """Arguments every implementation accepts (test_valid_arguments_pass checks that), plus
    the unpacked weights (keys starting with '_') for the reference of the packed ops."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    if family in ("attention", "attention_probs"):
        return dict(q=r(B, H, NQ, DK), k=r(B, H, NK, DK), v=r(B, H, NK, DV), bias=r(H, NQ, NK),
                    scale=0.5, hardswish=True)
    if family in ("linear", "linear_packed", "pack_weight"):
        w = r(N, K) / K ** 0.5
        return dict(x=r(*LEAD, K), weight=w, bias=r(N), residual=r(*LEAD, N),
                    activation="hardswish", packed_weight=cpu.pack_weight(w) if
                    family == "linear_packed" else None, out_features=N, _weight=w)
    w1, w2 = r(CH, C) / C ** 0.5, r(C, CH) / CH ** 0.5
    packed = family == "mlp_packed"
    return dict(x=r(*LEAD, C), w1=w1, b1=r(CH), w2=w2, b2=r(C), _w1=w1, _w2=w2,
                w1_packed=cpu.pack_weight(w1) if packed else None,
                w2_packed=cpu.pack_weight(w2) if packed else None)


def build(family, impl, edit):
    """(function, args, kwargs) for one call: the valid arguments with `edit`'s replacements."""
    device = device_of(impl)
    a = valid(family, device)
    a.update(edit(a, device) if edit else {})
    kwargs = {"out": a["out"]} if "out" in a else {}
    return entry(impl, family), tuple(a[name] for name in SIGNATURES[family]), kwargs


# ---------------------------------------------------------------- argument makers for edits
def huge(shape, device, last=1):
    """A stride-0 (expanded) tensor of any size: no memory behind it. `last` > 1 keeps a real,
    unit-stride last dimension of that length (some launchers copy before they check)."""
    return torch.zeros(last, device=device).expand(*shape[:-1], last) if last > 1 else \
        torch.zeros((), device=device).expand(*shape)


def meta_reaching(shape, stride):
    """A meta view whose strides reach past element 2**31 (a small view of a huge buffer)."""
    span = sum((n - 1) * s for n, s in zip(shape, stride)) + 1
    return torch.empty(span, device="meta").as_strided(shape, stride)


def strided_last(t):
    """t's values with a last-dimension stride of 2."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


# Sizes past 2**31 elements. Batch 2**44 of stride-0 tensors: every input passes each rank and
# shape check, but q (resp. x, weight) holds more than 2**31 elements and any output would
# need more bytes than a 47-bit address space, so nothing can be allocated by mistake.
# levit_kernels/cpu.py does not check sizes (it does not use checks.py): its cases below fail
# with the allocator's "can't allocate memory" RuntimeError instead of a ValueError naming
# the argument, until cpu.py checks them like ops.py and gpu/ do.
BIG = 2 ** 44


def _attention_too_big(a, d):
    return dict(q=huge((BIG, 1, NQ, 1), d), k=huge((BIG, 1, NK, 1), d),
                v=huge((BIG, 1, NK, 1), d), bias=a["bias"][:1])


def _attention_output_too_big(a, d):
    # Every input is small (2**23 elements) but the (B, Nq, H*Dv) output is 2**46 elements.
    n = 2 ** 23
    return dict(q=huge((1, 1, n, 1), d), k=huge((1, 1, 1, 1), d),
                v=torch.zeros(1, 1, 1, n, device=d), bias=huge((1, n, 1), d))


def _probs_output_too_big(a, d):
    # q, k and bias each hold < 2**31 elements, the (B, H, Nq, Nk) output ~2**46.5. Meta
    # tensors for the registered op (its fake implementation must refuse too).
    n, dev = 46000, "meta" if d == "cpu" else d
    return dict(q=huge((n, 1, n, 1), dev), k=huge((n, 1, n, 1), dev),
                bias=huge((1, n, n), dev, last=n))


def _linear_output_too_big(a, d):
    n = 2 ** 23
    return dict(x=huge((n, 1), d), weight=huge((n, 1), d), bias=None, residual=None)


def _linear_packed_output_too_big(a, d):
    n = 2 ** 23
    return dict(x=huge((n, 1), d), packed_weight=torch.zeros(n // 16, 1, 16), out_features=n,
                bias=None, residual=None)


def _mlp_hidden_too_big(a, d):
    n = 2 ** 23
    return dict(x=huge((n, 1), d), w1=huge((n, 1), d), b1=torch.zeros(n, device=d),
                w2=torch.zeros(1, n, device=d), b2=torch.zeros(1, device=d))


def _on_meta(name):
    return lambda a, d: {name: a[name].to("meta")}


# ---------------------------------------------------------------- the table
# (families, implementations, edit(valid_args, device) -> replacements, exception, pattern)
ATTN = ("attention", "attention_probs")
_SPECS = [
    # dtypes
    (ATTN, ALL, lambda a, d: {"q": a["q"].double()}, TypeError, r"^q\b.*float32.*float64"),
    (ATTN, ALL, lambda a, d: {k: a[k].double() for k in ("q", "k", "v", "bias")}, TypeError,
     r"^q\b.*float32.*float64"),
    (ATTN, ALL, lambda a, d: {"k": a["k"].int()}, TypeError, r"^k\b.*float.*int32"),
    (ATTN, ALL, lambda a, d: {"bias": a["bias"].half()}, TypeError, r"^bias\b.*float32.*float16"),
    (("attention",), ALL, lambda a, d: {"v": a["v"].half()}, TypeError,
     r"^v\b.*float32.*float16"),
    # devices
    (ATTN, ALL, _on_meta("bias"), ValueError, r"^bias\b.*(device|CPU).*meta"),
    (ATTN, ALL, _on_meta("k"), ValueError, r"^k\b.*(device|CPU).*meta"),
    # types, ranks
    (ATTN, ALL, lambda a, d: {"q": a["q"].tolist()}, (TypeError, RuntimeError),
     r"^q\b.*Tensor|Tensor.*\bq\b"),
    (("attention",), ALL, lambda a, d: {"v": None}, TypeError, r"^v\b.*Tensor.*NoneType"),
    (ATTN, ALL, lambda a, d: {"q": a["q"][0]}, ValueError, r"^q\b.*4 dim"),
    (ATTN, ALL, lambda a, d: {"k": a["k"][None]}, ValueError, r"^k\b.*4 dim"),
    (ATTN, ALL, lambda a, d: {"bias": a["bias"][0]}, ValueError, r"^bias\b.*3 dim"),
    (ATTN, ALL, lambda a, d: {"scale": "0.5"}, TypeError, r"^scale\b.*float"),
    (ATTN, ALL + (REGISTERED,), lambda a, d: {"scale": True}, TypeError,
     r"^scale\b.*float.*bool"),
    (ATTN, ALL, lambda a, d: {"scale": 10 ** 400}, ValueError, r"^scale\b.*too large"),
    # bool() would take any non-empty string, or 2, for True: a silent Hardswish
    (("attention",), ALL, lambda a, d: {"hardswish": "false"}, TypeError,
     r"^hardswish\b.*bool.*'false'"),
    (("attention",), ALL, lambda a, d: {"hardswish": 2}, TypeError, r"^hardswish\b.*bool"),
    # mismatched B / H / N / D
    (ATTN, ALL, lambda a, d: {"k": torch.cat([a["k"], a["k"][:1]])}, ValueError, r"^k\b.*shape"),
    (ATTN, ALL, lambda a, d: {"k": a["k"][..., :DK - 1]}, ValueError, r"^k\b.*shape"),
    (ATTN, ALL, lambda a, d: {"k": a["k"][:, :H - 1]}, ValueError, r"^k\b.*shape"),
    (("attention",), ALL, lambda a, d: {"v": a["v"][:, :H - 1]}, ValueError, r"^v\b.*shape"),
    (("attention",), ALL, lambda a, d: {"v": a["v"][:, :, :NK - 1]}, ValueError,
     r"^v\b.*shape"),
    (("attention",), ALL, lambda a, d: {"v": a["v"][:1]}, ValueError, r"^v\b.*shape"),
    (ATTN, ALL, lambda a, d: {"bias": a["bias"][:, :NQ - 1]}, ValueError, r"^bias\b.*shape"),
    (ATTN, ALL, lambda a, d: {"bias": a["bias"][..., :NK - 1]}, ValueError, r"^bias\b.*shape"),
    (ATTN, ALL, lambda a, d: {"bias": a["bias"][:H - 1]}, ValueError, r"^bias\b.*shape"),
    # strides
    (ATTN, ALL, lambda a, d: {"q": strided_last(a["q"])}, ValueError, r"^q\b.*unit stride"),
    (ATTN, ALL, lambda a, d: {"k": strided_last(a["k"])}, ValueError, r"^k\b.*unit stride"),
    (("attention",), ALL, lambda a, d: {"v": strided_last(a["v"])}, ValueError,
     r"^v\b.*unit stride"),
    # 32-bit index limits
    (ATTN, ALL, _attention_too_big, ValueError, r"^q\b.*elements"),
    (("attention",), ALL, _attention_output_too_big, ValueError, r"^q, v\b.*output.*elements"),
    # levit_kernels.cpu is left out here: its launcher makes bias contiguous (8.5 GB for
    # this bias) before it could check anything.
    (("attention_probs",), ("ops", "gpu"), _probs_output_too_big, ValueError,
     r"^q, k\b.*output.*elements"),
    (ATTN, ("ops", "gpu"),
     lambda a, d: {"q": meta_reaching((B, H, NQ, DK), (0, 0, 2 ** 31, 1))}, ValueError,
     r"^q\b.*strides.*32-bit"),

    # ---- linear (and linear_packed where the argument exists)
    (("linear", "linear_packed"), ALL, lambda a, d: {"x": a["x"].double()}, TypeError,
     r"^x\b.*float32.*float64"),
    (("linear",), ALL, lambda a, d: {"weight": a["weight"].long()}, TypeError,
     r"^weight\b.*float.*int64"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"bias": a["bias"].half()}, TypeError,
     r"^bias\b.*float32.*float16"),
    (("linear", "linear_packed"), ALL, _on_meta("residual"), ValueError,
     r"^residual\b.*(device|CPU).*meta"),
    (("linear",), ALL, _on_meta("weight"), ValueError, r"^weight\b.*(device|CPU).*meta"),
    (("linear",), ALL, lambda a, d: {"weight": None}, TypeError, r"^weight\b.*Tensor"),
    (("linear",), ALL, lambda a, d: {"weight": a["weight"][None]}, ValueError,
     r"^weight\b.*2 dim"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"x": a["x"][0, 0, 0]}, ValueError,
     r"^x\b.*at least 1 dim"),
    (("linear",), ALL, lambda a, d: {"weight": a["weight"][:, :K - 1]}, ValueError,
     r"^weight\b.*shape"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"bias": a["bias"][:N - 1]}, ValueError,
     r"^bias\b.*shape"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"bias": a["bias"][None]}, ValueError,
     r"^bias\b.*1 dim"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"residual": a["residual"][..., :N - 1]},
     ValueError, r"^residual\b.*shape"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"residual": a["residual"][0]},
     ValueError, r"^residual\b.*shape"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"activation": "relu"}, ValueError,
     r"^activation\b.*'relu'"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"activation": ["none"]}, ValueError,
     r"^activation\b.*\['none'\]"),
    # levit_kernels.cpu.linear accepts any strides (it copies x, and packs the weight), so
    # these two are errors only where the kernels read in place.
    (("linear",), ("ops", "gpu"), lambda a, d: {"x": strided_last(a["x"])}, ValueError,
     r"^x\b.*unit stride"),
    (("linear",), ("ops", "gpu"), lambda a, d: {"weight": strided_last(a["weight"])},
     ValueError, r"^weight\b.*unit stride"),
    (("linear", "linear_packed"), ALL, lambda a, d: {"x": huge((BIG, K), d, last=K)},
     ValueError, r"^x\b.*elements"),
    (("linear",), ALL, _linear_output_too_big, ValueError, r"^x, weight\b.*output.*elements"),
    (("linear_packed",), PACKED, _linear_packed_output_too_big, ValueError,
     r"^x, packed_weight\b.*output.*elements"),
    (("linear",), ("ops", "gpu"),
     lambda a, d: {"weight": meta_reaching((N, K), (2 ** 31, 1))}, ValueError,
     r"^weight\b.*strides.*32-bit"),
    # ---- linear_packed only (cpu.linear_packed calls its weight `packed`)
    (("linear_packed",), PACKED, lambda a, d: {"packed_weight": a["packed_weight"].double()},
     TypeError, r"^packed(_weight)?\b.*float32.*float64"),
    (("linear_packed",), PACKED, lambda a, d: {"packed_weight": a["weight"]}, ValueError,
     r"^packed(_weight)?\b.*3 dim"),
    (("linear_packed",), PACKED,
     lambda a, d: {"packed_weight": cpu.pack_weight(torch.randn(N, K + 1))}, ValueError,
     r"^packed(_weight)?\b.*shape"),
    (("linear_packed",), PACKED, lambda a, d: {"out_features": N + 16}, ValueError,
     r"^packed(_weight)?\b.*shape"),
    (("linear_packed",), PACKED, lambda a, d: {"out_features": 0}, ValueError,
     r"^out_features\b.*positive"),
    # int() would truncate these to N (or fail without naming the argument)
    (("linear_packed",), PACKED, lambda a, d: {"out_features": N + 0.7}, ValueError,
     r"^out_features\b"),
    (("linear_packed",), PACKED, lambda a, d: {"out_features": str(N)}, ValueError,
     r"^out_features\b"),
    (("linear_packed",), PACKED, lambda a, d: {"out_features": None}, ValueError,
     r"^out_features\b"),
    (("linear_packed",), PACKED,
     lambda a, d: {"packed_weight": torch.zeros(1, K, 32)[..., :16]}, ValueError,
     r"^packed(_weight)?\b.*contiguous"),
    (("linear_packed",), PACKED, _on_meta("packed_weight"), ValueError,
     r"^packed(_weight)?\b.*(device|CPU).*meta"),

    # ---- mlp
    (("mlp", "mlp_packed"), ALL, lambda a, d: {"x": a["x"].double()}, TypeError,
     r"^x\b.*float32.*float64"),
    (("mlp",), ALL, lambda a, d: {"w1": a["w1"].int()}, TypeError, r"^w1\b.*float.*int32"),
    (("mlp", "mlp_packed"), ALL, lambda a, d: {"b1": a["b1"].half()}, TypeError,
     r"^b1\b.*float32.*float16"),
    (("mlp", "mlp_packed"), ALL, _on_meta("b2"), ValueError, r"^b2\b.*(device|CPU).*meta"),
    (("mlp",), ALL, lambda a, d: {"w2": a["w2"][None]}, ValueError, r"^w2\b.*2 dim"),
    (("mlp", "mlp_packed"), ALL, lambda a, d: {"x": a["x"][0, 0, 0]}, ValueError,
     r"^x\b.*at least 1 dim"),
    (("mlp",), ALL, lambda a, d: {"w1": a["w1"][:, :C - 1]}, ValueError, r"^w1\b.*shape"),
    (("mlp",), ALL, lambda a, d: {"w2": a["w2"][:, :CH - 1]}, ValueError, r"^w2\b.*shape"),
    # levit_kernels/cpu.py takes Ch from b1 and so blames w2_packed (an argument mlp does not
    # have) for a b1 of the wrong size: this case fails there until cpu.py is fixed.
    (("mlp",), ALL, lambda a, d: {"b1": a["b1"][:CH - 1]}, ValueError, r"^b1\b.*shape"),
    (("mlp", "mlp_packed"), ALL, lambda a, d: {"b2": a["b2"][:C - 1]}, ValueError,
     r"^b2\b.*shape"),
    (("mlp",), ("ops", "gpu"), lambda a, d: {"x": strided_last(a["x"])}, ValueError,
     r"^x\b.*unit stride"),
    (("mlp", "mlp_packed"), ALL, lambda a, d: {"x": huge((BIG, C), d, last=C)}, ValueError,
     r"^x\b.*elements"),
    # The CPU kernel never materialises the (M, Ch) hidden activation, so instead of failing
    # to allocate it would run 2**46 multiply-adds: left out for levit_kernels.cpu.
    (("mlp",), ("ops", "gpu"), _mlp_hidden_too_big, ValueError,
     r"^x, w1\b.*hidden.*elements"),
    # ---- mlp_packed only
    (("mlp_packed",), PACKED, lambda a, d: {"w1_packed": cpu.pack_weight(torch.randn(CH, C + 1))},
     ValueError, r"^w1_packed\b.*shape"),
    (("mlp_packed",), PACKED, lambda a, d: {"w2_packed": a["w1_packed"]}, ValueError,
     r"^w2_packed\b.*shape"),
    (("mlp_packed",), PACKED, lambda a, d: {"w2_packed": a["w2_packed"].double()}, TypeError,
     r"^w2_packed\b.*float32.*float64"),

    # ---- pack_weight (levit_kernels.cpu only)
    (("pack_weight",), ("cpu",), lambda a, d: {"weight": a["weight"].double()}, TypeError,
     r"^weight\b.*float32.*float64"),
    (("pack_weight",), ("cpu",), lambda a, d: {"weight": a["weight"][0]}, ValueError,
     r"^weight\b.*2 dim"),
    (("pack_weight",), ("cpu",), lambda a, d: {"weight": a["weight"][:0]}, ValueError,
     r"^weight\b.*>= 1"),
    (("pack_weight",), ("cpu",), _on_meta("weight"), ValueError,
     r"^weight\b.*(device|CPU).*meta"),
    (("pack_weight",), ("cpu",), lambda a, d: {"weight": huge((BIG, 1), d)}, ValueError,
     r"^weight\b.*elements"),

    # ---- out= of the GPU launchers
    (("attention",), ("gpu",), lambda a, d: {"out": torch.empty(B, NQ, H * DV + 1, device=d)},
     ValueError, r"^out\b.*shape"),
    (("attention_probs",), ("gpu",),
     lambda a, d: {"out": torch.empty(B, H, NK, NQ, device=d).transpose(2, 3)}, ValueError,
     r"^out\b.*contiguous"),
    (("linear",), ("gpu",), lambda a, d: {"out": torch.empty(*LEAD, N, device=d).double()},
     TypeError, r"^out\b.*float32"),
    (("mlp",), ("gpu",), lambda a, d: {"out": torch.empty(*LEAD, C + 1, device=d)},
     ValueError, r"^out\b.*shape"),
]

CASES = [(f"{impl}.{family}", functools.partial(build, family, impl, edit), exc, pattern)
         for families, impls, edit, exc, pattern in _SPECS
         for family in families for impl in impls
         if family in ("linear", "mlp", "attention", "attention_probs") or impl != "gpu"]


def _needs(op):
    """The marks of a case of `op` ("impl.family"): its op's marker, and what it needs."""
    marks = [getattr(pytest.mark, OP_FAMILY[op.partition(".")[2]])]
    if op.startswith("gpu."):
        return marks + [needs_gpu]
    if op.startswith("cpu.") or "packed" in op:
        return marks + [needs_extension]
    return marks


def _case_id(op, pattern):
    return f"{op}-" + re.sub(r"[^A-Za-z0-9_,]+", "-", pattern.replace(r"\b", "")).strip("-")


@pytest.mark.parametrize(
    "op, builder, exc, pattern",
    [pytest.param(*case, id=_case_id(case[0], case[3]), marks=_needs(case[0]))
     for case in CASES])
def test_bad_input_raises_naming_the_argument(op, builder, exc, pattern):
    fn, args, kwargs = builder()
    with pytest.raises(exc, match=pattern):
        fn(*args, **kwargs)


# ---------------------------------------------------------------- conv2d_packed's fake
# The registered op's fake implementation (what torch.compile and meta tensors run) must refuse
# what the kernel's launcher refuses, with the same error.
CONV_ARGS = ("x", "packed", "out_channels", "kernel_size", "stride", "padding", "bias",
             "activation")
CONV_CASES = {
    "x float64": (lambda a: {"x": a["x"].double()}, TypeError, r"^x\b.*float32.*float64"),
    "x 3 dims": (lambda a: {"x": a["x"][0]}, ValueError, r"^x\b.*4 dim"),
    "packed for 4 channels": (lambda a: {"packed": cpu.pack_conv_weight(torch.randn(5, 4, 3, 3))},
                              ValueError, r"^packed\b.*shape"),
    "out_channels": (lambda a: {"out_channels": 17}, ValueError, r"^packed\b.*shape"),
    "out_channels 0": (lambda a: {"out_channels": 0}, ValueError, r"^out_channels\b.*positive"),
    "bias": (lambda a: {"bias": a["bias"][:4]}, ValueError, r"^bias\b.*shape"),
    "stride 0": (lambda a: {"stride": 0}, ValueError, r"^stride\b.*>= 1"),
    "padding -1": (lambda a: {"padding": -1}, ValueError, r"^padding\b.*>= 0"),
    "kernel past the image": (lambda a: {"kernel_size": 13, "padding": 0}, ValueError,
                              r"^x\b.*smaller than"),
    "activation": (lambda a: {"activation": "relu"}, ValueError, r"^activation\b.*'relu'"),
}


@needs_extension
@pytest.mark.parametrize("edit, exc, pattern", CONV_CASES.values(), ids=CONV_CASES)
def test_conv2d_packed_fake_checks_like_the_kernel(edit, exc, pattern):
    from torch._subclasses.fake_tensor import FakeTensorMode

    a = dict(x=torch.randn(2, 9, 11, 3), packed=cpu.pack_conv_weight(torch.randn(5, 3, 3, 3)),
             out_channels=5, kernel_size=3, stride=2, padding=1, bias=torch.randn(5),
             activation="hardswish")
    a.update(edit(a))
    args = [a[name] for name in CONV_ARGS]
    with pytest.raises(exc, match=pattern):
        cpu.conv2d_packed(*args)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args]
        with pytest.raises(exc, match=pattern):
            torch.ops.levit.conv2d_packed(*fake)


# ---------------------------------------------------------------- the valid baseline
def _reference(family, args, a):
    """The reference result for a call of `family` with positional `args`."""
    if family == "linear_packed":
        x, _, _, bias, residual, activation = args
        return reference.linear(x, a["_weight"], bias, residual, activation)
    if family == "mlp_packed":
        x, _, b1, _, b2 = args
        return reference.mlp(x, a["_w1"], b1, a["_w2"], b2)
    return getattr(reference, family)(*args)


IMPL_FAMILIES = [(impl, family) for family in SIGNATURES if family != "pack_weight"
                 for impl in (PACKED if "packed" in family else ALL)]


def _marks(impl, family):
    return _needs(f"{impl}.{family}")


@pytest.mark.parametrize("impl, family", [pytest.param(i, f, marks=_marks(i, f), id=f"{i}.{f}")
                                          for i, f in IMPL_FAMILIES])
def test_valid_arguments_pass(impl, family):
    """The table's edits start from these arguments: they must be accepted and correct."""
    a = valid(family, device_of(impl))
    args = tuple(a[name] for name in SIGNATURES[family])
    out = entry(impl, family)(*args)
    torch.testing.assert_close(out, _reference(family, args, a), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- empty inputs
REF = "reference"


def _sizes(**changes):
    """Valid arguments of the attention/linear/mlp families with some sizes set to 0."""
    def edit(a, d):
        out = {}
        for name, (dim, size) in changes.items():
            t = a[name]
            out[name] = t.narrow(dim, 0, size) if size <= t.shape[dim] else t
        return out
    return edit


# (family, edit, expected per implementation: REF = equal to the reference, or (exc, pattern))
# Every implementation answers an empty input as the reference does.
ALL_REF = dict(ops=REF, cpu=REF, gpu=REF)
_EMPTY = [
    (ATTN, "B=0", _sizes(q=(0, 0), k=(0, 0), v=(0, 0)), ALL_REF),
    (ATTN, "H=0", _sizes(q=(1, 0), k=(1, 0), v=(1, 0), bias=(0, 0)), ALL_REF),
    (ATTN, "Nq=0", _sizes(q=(2, 0), bias=(1, 0)), ALL_REF),
    (ATTN, "Nk=0", _sizes(k=(2, 0), v=(2, 0), bias=(2, 0)), ALL_REF),
    (ATTN, "Dk=0", _sizes(q=(3, 0), k=(3, 0)), ALL_REF),
    (("attention",), "Dv=0", _sizes(v=(3, 0)), ALL_REF),
    (("linear", "linear_packed"), "M=0", _sizes(x=(1, 0), residual=(1, 0)), ALL_REF),
    (("linear",), "K=0", _sizes(x=(2, 0), weight=(1, 0)), ALL_REF),
    (("linear",), "N=0", _sizes(weight=(0, 0), bias=(0, 0), residual=(2, 0)), ALL_REF),
    (("mlp", "mlp_packed"), "M=0", _sizes(x=(0, 0)), ALL_REF),
    (("mlp",), "C=0", _sizes(x=(2, 0), w1=(1, 0), w2=(0, 0), b2=(0, 0)), ALL_REF),
    (("mlp",), "Ch=0", _sizes(w1=(0, 0), b1=(0, 0), w2=(1, 0)), ALL_REF),
]
EMPTY_CASES = [(impl, family, what, edit, expected[impl])
               for families, what, edit, expected in _EMPTY for family in families
               for impl in expected if impl in (PACKED if "packed" in family else ALL)]


@pytest.mark.parametrize(
    "impl, family, what, edit, expected",
    [pytest.param(*c, id=f"{c[0]}.{c[1]}-{c[2]}", marks=_marks(c[0], c[1]))
     for c in EMPTY_CASES])
def test_empty_inputs(impl, family, what, edit, expected):
    fn, args, _ = build(family, impl, edit)
    if expected != REF:
        exc, pattern = expected
        with pytest.raises(exc, match=pattern):
            fn(*args)
        return
    a = valid(family, device_of(impl))
    a.update(edit(a, device_of(impl)))
    out = fn(*args)
    expected = _reference(family, args, a)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- NaN and ±inf
INF, NAN = math.inf, math.nan


def _poke(name, index, value):
    """Edit: a copy of argument `name` with t[index] = value."""
    def edit(a, d):
        t = a[name].clone()
        t[index] = value
        return {name: t}
    return edit


def _pokes(*edits):
    def edit(a, d):
        out = {}
        for e in edits:
            a2 = {**a, **out}
            out.update(e(a2, d))
        return out
    return edit


_SPECIAL = [
    (ATTN, "q nan", _poke("q", (0, 1, 3, 2), NAN)),
    (ATTN, "q +inf", _poke("q", (1, 0, 2, 1), INF)),
    (ATTN, "k nan", _poke("k", (1, 2, 4, 0), NAN)),
    (ATTN, "bias nan", _poke("bias", (2, 6, 1), NAN)),
    (ATTN, "bias +inf", _poke("bias", (1, 3, 2), INF)),
    (ATTN, "bias -inf one key", _poke("bias", (0, 4, 3), -INF)),
    (ATTN, "bias -inf whole row", _poke("bias", (2, 1, slice(None)), -INF)),
    (("attention",), "v nan", _poke("v", (0, 2, 1, 5), NAN)),
    (("attention",), "v ±inf", _pokes(_poke("v", (1, 1, 0, 0), INF),
                                      _poke("v", (1, 1, 3, 4), -INF))),
    (("linear", "linear_packed"), "x nan", _poke("x", (1, 2, 3), NAN)),
    (("linear", "linear_packed"), "x ±inf", _pokes(_poke("x", (0, 1, 2), INF),
                                                   _poke("x", (1, 4, 7), -INF))),
    (("linear", "linear_packed"), "x ±inf no activation",
     _pokes(_poke("x", (0, 1, 2), INF), _poke("x", (1, 4, 7), -INF),
            lambda a, d: {"activation": "none"})),
    (("linear", "linear_packed"), "bias nan ±inf",
     _pokes(_poke("bias", 1, NAN), _poke("bias", 2, INF), _poke("bias", 4, -INF))),
    (("linear", "linear_packed"), "residual nan ±inf",
     _pokes(_poke("residual", (0, 0, 1), NAN), _poke("residual", (1, 3, 2), INF),
            _poke("residual", (1, 3, 5), -INF))),
    (("linear",), "weight +inf", _poke("weight", (3, 5), INF)),
    (("mlp", "mlp_packed"), "x nan", _poke("x", (0, 3, 2), NAN)),
    (("mlp", "mlp_packed"), "x +inf", _poke("x", (1, 1, 6), INF)),
    (("mlp", "mlp_packed"), "b1 nan", _poke("b1", 7, NAN)),
    (("mlp", "mlp_packed"), "b2 ±inf", _pokes(_poke("b2", 0, INF), _poke("b2", 5, -INF))),
    (("mlp",), "w1 -inf", _poke("w1", (2, 3), -INF)),
    (("mlp",), "w2 nan", _poke("w2", (6, 9), NAN)),
]

# Implementations: ops (the active CPU path), every CPU path explicitly, and the GPU launchers.
SPECIAL_IMPLS = ["ops"] + [f"cpu:{name}" for name in CPU_ISAS] + ["gpu"]
SPECIAL_CASES = [(impl, family, what, edit)
                 for families, what, edit in _SPECIAL for family in families
                 for impl in SPECIAL_IMPLS
                 if not ("packed" in family and impl == "gpu")]


def assert_same_specials(out, expected):
    """Same NaN mask, same +inf and -inf positions, finite values close."""
    assert out.shape == expected.shape
    for name, mask in (("NaN", torch.isnan), ("+inf", lambda t: t == INF),
                       ("-inf", lambda t: t == -INF)):
        got, want = mask(out), mask(expected)
        wrong = (got != want).nonzero().tolist()
        assert not wrong, (f"{name} differs from the reference at {len(wrong)} positions, "
                           f"e.g. {wrong[:4]}: got {[out[tuple(i)].item() for i in wrong[:4]]}, "
                           f"reference {[expected[tuple(i)].item() for i in wrong[:4]]}")
    finite = torch.isfinite(expected)
    if finite.any():
        torch.testing.assert_close(out[finite], expected[finite], rtol=1e-4, atol=1e-4)


# Why every CPU path separately: a SIMD exp that clamps its argument with max(x, lo) maps NaN
# to lo (x86 max returns its second operand for NaN), so NaN scores become ~1e-38 weights and
# NaN in q/k/bias, +inf in the bias or a fully -inf row give finite probabilities where
# torch.softmax gives NaN; the generic path (std::exp) would still be right.
@pytest.mark.parametrize(
    "impl, family, what, edit",
    [pytest.param(*c, id=f"{c[0]}.{c[1]}-{c[2]}",
                  marks=_marks("gpu" if c[0] == "gpu" else "cpu", c[1])) for c in SPECIAL_CASES])
def test_nan_and_inf_propagate_like_the_reference(impl, family, what, edit):
    kind, _, isa_name = impl.partition(":")
    fn, args, _ = build(family, kind, edit)
    a = valid(family, device_of(kind))
    a.update(edit(a, device_of(kind)))
    expected = _reference(family, args, a)
    if isa_name:
        with using_isa(isa_name):
            out = fn(*args)
    else:
        out = fn(*args)
    assert_same_specials(out, expected)


# ---------------------------------------------------------------- the public conv2d_packed
# levit_kernels.ops.conv2d_packed hands its ints to the registered op; int() would truncate
# stride=1.9 to 1 (another output shape) and take "2" for 2.
@needs_extension
@pytest.mark.parametrize("name, value", [("stride", 1.9), ("padding", 0.9), ("kernel_size", 3.7),
                                         ("stride", "2"), ("kernel_size", (3, 3)),
                                         ("out_channels", 5.0), ("padding", -1)])
def test_conv2d_packed_wrapper_refuses_what_is_not_an_int(name, value):
    a = dict(x=torch.randn(1, 8, 8, 3), packed_weight=cpu.pack_conv_weight(torch.randn(5, 3, 3, 3)),
             out_channels=5, kernel_size=3, stride=1, padding=1)
    a[name] = value
    with pytest.raises(ValueError, match=rf"^{name}\b.*int"):
        ops.conv2d_packed(**a)


@needs_extension
@pytest.mark.parametrize("kernel_size", [3.0, True, "3", (3, 3, 3)])
def test_conv2d_packed_launcher_names_a_bad_kernel_size(kernel_size):
    """levit_kernels.cpu.conv2d_packed takes an int or a pair (the registered op's schema
    refuses these by itself)."""
    with pytest.raises(ValueError, match=r"^kernel_size\b.*int"):
        cpu.conv2d_packed(torch.randn(1, 8, 8, 3), cpu.pack_conv_weight(torch.randn(5, 3, 3, 3)),
                          5, kernel_size, 1, 1)


# ---------------------------------------------------------------- packing
@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("segments", [0, -1, 3, 41, 2.0, True])
def test_pack_weight_refuses_segments_that_do_not_divide_k(dtype, segments):
    """K = 40 in `segments` equal runs: 0 used to divide by zero in C++ (SIGFPE) and 3, 41 or
    -1 to drop columns from the bf16 layout without a word."""
    with pytest.raises(ValueError, match=r"^segments\b"):
        cpu.pack_weight(torch.randn(20, 40, dtype=dtype), segments=segments)


@needs_extension
def test_pack_weight_segments_that_divide_k_keep_every_column():
    w = torch.randn(20, 40).bfloat16()
    for segments in (1, 2, 4, 5, 8, 40):
        values = set(cpu.pack_weight(w, segments=segments).float().flatten().tolist())
        assert set(w.float().flatten().tolist()) <= values, segments


@needs_extension
@pytest.mark.parametrize("shape", [(0, 3, 3, 3), (4, 0, 3, 3), (4, 3, 0, 3)])
def test_pack_conv_weight_refuses_an_empty_weight(shape):
    with pytest.raises(ValueError, match=r"^weight\b.*>= 1"):
        cpu.pack_conv_weight(torch.randn(shape))


@needs_extension
def test_prepared_linear_names_a_bad_activation():
    layer = cpu.PackedLinear(torch.randn(6, 8))
    with pytest.raises(ValueError, match=r"^activation\b"):
        layer(torch.randn(2, 8), None, ["none"])


@needs_extension
@pytest.mark.parametrize("name, value", [("subsample", 0), ("heads", 0), ("key_dim", 1.5)])
def test_forward_program_attention_refuses_bad_sizes(name, value):
    program = cpu.ForwardProgram(3, 32, 32)
    program.add_conv(cpu.PackedConv(torch.randn(16, 3, 3, 3), None, 2, 1), "none")
    kwargs = dict(qkv=cpu.PackedLinear(torch.randn(2 * (8 + 8 + 8), 16)),
                  proj=cpu.PackedLinear(torch.randn(16, 2 * 8)), bias=torch.randn(2, 256, 256),
                  heads=2, key_dim=8, val_dim=8, scale=0.3, offsets={"q": 0, "k": 8, "v": 16})
    kwargs[name] = value
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        program.add_attention(**kwargs)


@needs_extension
@pytest.mark.parametrize("name", ["offsets", "padding"])
def test_forward_program_refuses_sizes_that_would_overflow(name):
    """A conv padding of 2**33 made the workspace size wrap around int64 (negative): the
    program then ran on an empty workspace and crashed. Offsets must be ints."""
    program = cpu.ForwardProgram(3, 32, 32)
    if name == "padding":
        for stride, padding in ((3, 2 ** 33), (1, 2 ** 30)):
            with pytest.raises(ValueError, match=r"^(padding|conv)\b"):
                program.add_conv(cpu.PackedConv(torch.randn(8, 3, 3, 3), None, stride, padding),
                                 "none")
        assert program._program.workspace_elements(batch=2) >= 0
        return
    program.add_conv(cpu.PackedConv(torch.randn(16, 3, 3, 3), None, 2, 1), "none")
    with pytest.raises(ValueError, match=r"^offsets\['k'\]"):
        program.add_attention(qkv=cpu.PackedLinear(torch.randn(2 * (8 + 8 + 8), 16)),
                              proj=cpu.PackedLinear(torch.randn(16, 2 * 8)),
                              bias=torch.randn(2, 256, 256), heads=2, key_dim=8, val_dim=8,
                              scale=0.3, offsets={"q": 0, "k": 8.0, "v": 16})


@needs_extension
@pytest.mark.parametrize("out_features", [2 ** 63 - 1, N + 16, 0])
def test_packed_ops_name_out_features_beyond_the_panels(out_features):
    """A packed weight of one 16-column panel holds 1..16 outputs; a huge count used to
    overflow the expected shape (a negative size in the message)."""
    a = valid("linear_packed", "cpu")
    pattern = r"^out_features\b.*positive" if out_features == 0 else \
        (rf"^packed_weight: shape \(1, {K}, 16\).*1\.\.16 output features, "
         rf"not out_features={out_features}$")
    with pytest.raises(ValueError, match=pattern):
        ops.linear_packed(a["x"], a["packed_weight"], out_features)


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_packed, n_given", [(20, 19), (20, 21), (20, 32), (20, 17),
                                               (16, 15), (1, 2)])
def test_packed_weights_tell_n_from_another_n_of_as_many_panels(dtype, n_packed, n_given):
    """N is padded to whole 16-column panels, so N = 20 and 17..32 pack to the same shape: the
    wrong out_features used to drop columns of the weight, or return padding columns (zeros
    plus the bias). Each padding column is marked; every packed op reads the marks."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    k = 6
    pattern = rf"^(packed_weight|w1_packed|w2_packed|packed): was packed for {n_packed} output " \
              rf"features, not for the {n_given} of"
    with pytest.raises(ValueError, match=pattern):
        ops.linear_packed(r(2, k), cpu.pack_weight(r(n_packed, k)), n_given)
    with pytest.raises(ValueError, match=pattern):     # the hidden size comes from b1
        ops.mlp_packed(r(2, k), cpu.pack_weight(r(n_packed, k)), r(n_given),
                       cpu.pack_weight(r(k, n_given)), r(k))
    with pytest.raises(ValueError, match=pattern):     # 1x1 conv: N = Cout
        ops.conv2d_packed(r(1, 4, 4, k), cpu.pack_conv_weight(r(n_packed, k, 1, 1)), n_given,
                          1, 1, 0)
    with pytest.raises(ValueError, match=pattern):
        cpu.linear_packed(r(2, k), cpu.pack_weight(r(n_packed, k)), n_given)
    x, w = r(3, k), r(n_packed, k)      # the right N runs as before
    torch.testing.assert_close(ops.linear_packed(x, cpu.pack_weight(w), n_packed).float(),
                               reference.linear(x.double(), w.double()).float(),
                               rtol=2e-2, atol=2e-2)


@needs_extension
def test_pack_weight_names_segments_past_int64():
    with pytest.raises(ValueError, match=r"^segments\b"):
        cpu.pack_weight(torch.randn(4, 6), 2 ** 64)


# ---------------------------------------------------------------- autograd and torch.func
# The cpu.* and gpu.* launchers compute values only. An input that requires grad used to give
# a result without grad_fn (a silently wrong gradient); under torch.func the kernels found no
# storage.
LAUNCHER_FAMILIES = [pytest.param(i, f, marks=_marks(i, f), id=f"{i}.{f}")
                     for i in ("cpu", "gpu")
                     for f in ("attention", "attention_probs", "linear", "mlp", "linear_packed",
                               "mlp_packed")
                     if i == "cpu" or not f.endswith("_packed")]


def _first_input(impl, family):
    """The valid arguments, and the index and name of the first tensor (x or q)."""
    a = valid(family, device_of(impl))
    args = [a[name] for name in SIGNATURES[family]]
    index = next(i for i, name in enumerate(SIGNATURES[family]) if name in ("x", "q"))
    return args, index, SIGNATURES[family][index]


@pytest.mark.parametrize("impl, family", LAUNCHER_FAMILIES)
def test_launchers_refuse_inputs_that_require_grad(impl, family):
    args, index, name = _first_input(impl, family)
    args[index] = args[index].clone().requires_grad_()
    pattern = rf"^{name}: requires grad.*levit_kernels.{impl}.*no_grad"
    with pytest.raises(RuntimeError, match=pattern):
        entry(impl, family)(*args)
    with torch.no_grad():    # no graph is recorded: nothing is lost
        entry(impl, family)(*args)


@pytest.mark.parametrize("impl, family", LAUNCHER_FAMILIES)
def test_launchers_name_a_torch_func_transform(impl, family):
    args, index, name = _first_input(impl, family)

    def call(t):
        return entry(impl, family)(*args[:index], t, *args[index + 1:])

    with pytest.raises(TypeError, match=rf"^{name}: a torch.func transform.*levit_kernels.ops"):
        torch.func.vmap(call)(torch.stack([args[index]] * 2))


@needs_extension
def test_cpu_launchers_refuse_a_weight_that_requires_grad_even_for_empty_inputs():
    w = torch.randn(5, 6, requires_grad=True)
    for x in (torch.randn(3, 6), torch.randn(0, 6)):
        with pytest.raises(RuntimeError, match=r"^weight: requires grad"):
            cpu.linear(x, w)


@needs_extension
def test_prepared_layers_refuse_tracked_inputs_and_hold_the_bias_detached():
    bias = torch.randn(6, requires_grad=True)
    layer = cpu.PackedLinear(torch.randn(6, 8), bias)
    assert not layer.bias.requires_grad
    with pytest.raises(RuntimeError, match=r"^x: requires grad"):
        layer(torch.randn(2, 8, requires_grad=True))
    mlp = cpu.PackedMlp(torch.randn(12, 8), torch.randn(12), torch.randn(8, 12), torch.randn(8))
    with pytest.raises(TypeError, match=r"^x: a torch.func transform"):
        torch.func.vmap(mlp)(torch.randn(3, 2, 8))
    with pytest.raises(RuntimeError, match=r"^images: requires grad"):
        program = cpu.ForwardProgram(3, 16, 16)
        program.add_conv(cpu.PackedConv(torch.randn(8, 3, 3, 3), None, 2, 1), "none")
        program.set_head(cpu.PackedLinear(torch.randn(4, 8)))
        program(torch.randn(1, 3, 16, 16, requires_grad=True))


@needs_extension
@pytest.mark.parametrize("k_packed, k_input", [(5, 6), (6, 5), (7, 8)])
def test_bf16_packed_weights_tell_k_from_k_plus_one(k_packed, k_input):
    """bf16 runs are padded to pairs, so K = 5 and K = 6 pack to the same shape: x of K = 6
    on a K = 5 pack silently ignored a column of x, and the other way round a column of the
    weight. The padding of an odd run is marked; every packed op reads the mark."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).bfloat16()

    pattern = rf"^(packed_weight|w1_packed|packed): was packed for K = {k_packed}, not for " \
              rf"the K = {k_input}"
    with pytest.raises(ValueError, match=pattern):
        ops.linear_packed(r(2, k_input), cpu.pack_weight(r(4, k_packed)), 4)
    with pytest.raises(ValueError, match=pattern):
        ops.mlp_packed(r(2, k_input), cpu.pack_weight(r(8, k_packed)), r(8),
                       cpu.pack_weight(r(k_input, 8)), r(k_input))
    with pytest.raises(ValueError, match=pattern):   # a 1x1 conv: K = Cin
        ops.conv2d_packed(r(1, 4, 4, k_input), cpu.pack_conv_weight(r(2, k_packed, 1, 1)), 2, 1,
                          1, 0)
    x, w = r(3, k_packed), r(4, k_packed)      # the matching K runs as before
    torch.testing.assert_close(ops.linear_packed(x, cpu.pack_weight(w), 4).float(),
                               reference.linear(x.double(), w.double()).float(),
                               rtol=2e-2, atol=2e-2)
