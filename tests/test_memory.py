"""Repeated calls do not leak: resident memory stays flat over 10,000 calls of each op and 200
forwards of the fused model.

Resident set size comes from /proc/self/statm (Linux; skipped elsewhere). Each measurement
starts after a warm-up, so one-off growth — per-thread scratch buffers, the thread pool, the
allocator's caches, the dispatcher's and the fused plan's first-call state — is not counted;
a leak of even ~1 KB per call would show up as 10 MB over 10,000 calls.
"""
import gc
import os

import pytest
import torch

from levit_kernels import LeViT, cpu

from levit_testing import op_params, randomize_

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc"),
    pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built"),
]

LIMIT = 10 * 2**20     # bytes of growth allowed
CALLS = 10_000
FORWARDS = 200


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def growth(fn, calls, warmup):
    for _ in range(warmup):
        fn()
    before = rss()
    for _ in range(calls):
        fn()
    return rss() - before


@pytest.mark.parametrize("op, args", op_params())
def test_op_calls_do_not_grow_memory(op, args):
    grown = growth(lambda: op(*args), CALLS, warmup=500)
    assert grown < LIMIT, f"{op}: resident memory grew {grown / 2**20:.1f} MB over {CALLS} calls"


def test_fused_forwards_do_not_grow_memory():
    # img_size 64: a 4x4 token grid, so 200 forwards take about a second.
    model = randomize_(LeViT("LeViT-128S", fused=True, img_size=64)).eval()
    images = torch.randn(2, 3, 64, 64)

    def forward():
        with torch.no_grad():
            model(images)

    grown = growth(forward, FORWARDS, warmup=20)
    assert grown < LIMIT, (f"fused LeViT: resident memory grew {grown / 2**20:.1f} MB over "
                           f"{FORWARDS} forwards")
