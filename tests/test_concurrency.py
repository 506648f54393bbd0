"""Python threads sharing the ops and one fused model get exactly the sequential results.

The C++ kernels release the GIL, run on a process-wide thread pool (a second caller that finds
it busy runs its loop inline) and keep per-thread scratch buffers; the fused model keeps one
cached plan that several threads may find stale and rebuild at once. Results must not depend
on any of that: every concurrent result is compared with torch.equal (bit for bit) to the same
call made alone.
"""
import threading

import pytest
import torch

from levit_kernels import LeViT, cpu

from levit_testing import op_calls, randomize_

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")

N_THREADS = 4


def run_in_threads(work, n=N_THREADS, timeout=300):
    """Runs work(i) in n threads released together; returns their results, re-raising the
    first exception a thread hit."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def target(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("torch_threads", [1, 2])
def test_ops_from_four_threads_match_sequential_calls(torch_threads):
    old = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        calls = op_calls(tokens=49, channels=64, heads=4, key_dim=16)
        expected = {name: fn() for name, fn in calls.items()}
        names = list(calls)

        def work(i):
            # Each thread walks the ops in its own rotated order, so different ops (and the
            # same op) overlap in time; 20 rounds give the pool plenty of collisions.
            order = names[i % len(names):] + names[:i % len(names)]
            return [(name, calls[name]()) for _ in range(20) for name in order]

        for results in run_in_threads(work):
            for name, out in results:
                assert torch.equal(out, expected[name]), f"{name} differs when run concurrently"
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def shared_model():
    return randomize_(LeViT("LeViT-128S", fused=True)).eval()


def test_one_fused_model_shared_by_four_threads(shared_model):
    images = [torch.randn(1 + i % 2, 3, 224, 224, generator=torch.Generator().manual_seed(i))
              for i in range(N_THREADS)]
    with torch.no_grad():
        expected = [shared_model(x) for x in images]
        results = run_in_threads(lambda i: [shared_model(images[i]) for _ in range(3)])
    for i, outs in enumerate(results):
        for out in outs:
            assert torch.equal(out, expected[i]), f"thread {i}: logits differ from a lone call"


def test_threads_rebuilding_a_stale_plan_at_once(shared_model):
    """An in-place weight edit makes the cached plan stale: four threads then find it stale
    together and may all rebuild it; each must still get the logits of the edited weights."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(9))
    reference_model = LeViT("LeViT-128S", fused=True)
    with torch.no_grad():
        shared_model.head.linear.weight.mul_(-0.5)          # bumps the version counter
        reference_model.load_state_dict(shared_model.state_dict())
        expected = reference_model.eval()(images)
        results = run_in_threads(lambda i: shared_model(images))
    for i, out in enumerate(results):
        assert torch.equal(out, expected), f"thread {i}: logits differ after the rebuild"
