"""Every Triton launcher launches on its tensors' device: a fake two-device runtime.

Triton launches on torch.cuda.current_device()'s current stream, whatever device the tensors
are on. The launchers therefore go through common.RUNTIME, which makes the tensors' device
current around each launch. Here RUNTIME is faked: the tensors (CPU tensors, run by the
interpreter) claim to live on cuda:1 while cuda:0 is current, the device switch is recorded,
and every kernel launch records which device was current when it ran. With a real second GPU
the same launches are checked for real (requires_two_gpus).
"""
import contextlib
import os

import pytest
import torch

pytest.importorskip("triton")
from levit_kernels import gpu  # noqa: E402
from levit_kernels.ops.gpu import common  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="no CUDA and TRITON_INTERPRET is not 1"),
    pytest.mark.attention, pytest.mark.linear, pytest.mark.mlp, pytest.mark.conv2d]


class FakeTwoDevices:
    """Two CUDA devices, 0 current; the tensors are on 1."""

    def __init__(self):
        self.current = 0
        self.switches = []
        self.launched_on = []

    def device_of(self, t):
        return torch.device("cuda", 1)

    def current_device(self):
        return self.current

    @contextlib.contextmanager
    def use_device(self, index):
        saved, self.current = self.current, index
        self.switches.append(index)
        try:
            yield
        finally:
            self.current = saved


@pytest.fixture
def two_devices(monkeypatch):
    fake = FakeTwoDevices()
    run = common.RUNTIME.run
    for name in ("device_of", "current_device", "use_device"):
        monkeypatch.setattr(common.RUNTIME, name, getattr(fake, name))

    def recording_run(kernel, grid, args, kwargs):
        fake.launched_on.append(fake.current)
        run(kernel, grid, args, kwargs)

    monkeypatch.setattr(common.RUNTIME, "run", recording_run)
    return fake


def _calls():
    """One call of every launcher, on small CPU tensors."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 7, 3, 64, generator=g)
    q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split([16, 16, 32], dim=-1))
    bias = torch.randn(3, 7, 7, generator=g)
    x = torch.randn(2, 7, 16, generator=g)
    w, b = torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    wide = torch.randn(5, 136, generator=g)          # C > 128: the two-GEMM MLP
    img = torch.randn(1, 3, 9, 9, generator=g)
    return {
        "attention": lambda: gpu.attention(q, k, v, bias, 0.25, True),
        "attention_probs": lambda: gpu.attention_probs(q, k, bias, 0.25),
        "linear": lambda: gpu.linear(x, w, b, None, "hardswish"),
        "mlp": lambda: gpu.mlp(x, w, b, w.T.contiguous(), torch.randn(16, generator=g)),
        "mlp (two GEMMs)": lambda: gpu.mlp(wide, torch.randn(8, 136, generator=g),
                                           torch.randn(8, generator=g),
                                           torch.randn(136, 8, generator=g),
                                           torch.randn(136, generator=g)),
        "conv2d": lambda: gpu.conv2d(img.permute(0, 2, 3, 1), torch.randn(8, 3, 3, 3, generator=g),
                                     torch.randn(8, generator=g), 2, 1, "hardswish"),
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fake runs CPU tensors (interpreter)")
@pytest.mark.parametrize("name", list(_calls()))
def test_every_launch_runs_on_the_tensors_device(two_devices, name):
    _calls()[name]()
    assert two_devices.launched_on, "nothing was launched"
    assert two_devices.launched_on == [1] * len(two_devices.launched_on)
    assert two_devices.switches == [1] * len(two_devices.launched_on)
    assert two_devices.current == 0          # switched back after each launch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fake runs CPU tensors (interpreter)")
def test_no_switch_when_the_device_is_already_current(two_devices):
    two_devices.current = 1
    _calls()["linear"]()
    assert two_devices.launched_on == [1] and not two_devices.switches


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_model_on_the_second_gpu_matches():
    import levit_kernels
    torch.manual_seed(0)
    ref = levit_kernels.LeViT("LeViT-128S", num_classes=10).eval()
    fused = levit_kernels.LeViT("LeViT-128S", num_classes=10, fused=True).eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.cuda.device(0):
        out = fused.to("cuda:1").half()(x.to("cuda:1", torch.float16))
    expected = ref(x)
    assert out.device == torch.device("cuda", 1)
    assert (out.float().cpu() - expected).abs().max() <= 2e-2 * expected.abs().max()
