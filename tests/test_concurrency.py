"""Python threads sharing the ops and one fused model get exactly the sequential results.

The C++ kernels release the GIL, run on a process-wide thread pool (a second caller that finds
it busy runs its loop inline) and keep per-thread scratch buffers; the fused model keeps one
cached plan that several threads may find stale and rebuild at once. Results must not depend
on any of that: every concurrent result is compared with torch.equal (bit for bit) to the same
call made alone.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from levit_kernels import LeViT, cpu
from levit_kernels.ops import openmp_team

from levit_testing import op_calls, randomize_, using_threads

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")

N_THREADS = 4


@pytest.fixture(autouse=True, params=["own pool", "openmp team"])
def pool(request):
    """Every test runs on both: the kernels' own pool, and PyTorch's OpenMP team (the default
    where PyTorch's CPU ops run on OpenMP; skipped, saying why, where there is none to share)."""
    lib = cpu._lib()
    if request.param == "own pool":
        lib.set_team_runner(address=0)
    else:
        openmp_team.attach(lib)
        if not lib.team_runner_active():
            pytest.skip(f"no OpenMP team to share here: {openmp_team.describe()}")
    yield request.param
    openmp_team.attach(lib)     # back to what the import chose


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


# ---- the thread pool itself ----------------------------------------------------------------------
def _pool_workers():
    return cpu._lib().thread_pool_workers()


CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_more_threads_than_cpus_start_no_more_workers_than_cpus():
    """More threads than CPUs cannot speed up compute-bound kernels, and a pool that spins on
    every one of them takes the cores from the threads doing the work: a job runs on at most
    as many threads as there are CPUs (the caller and CPUS - 1 workers), with the same
    results."""
    calls = op_calls(tokens=49, channels=64, heads=4, key_dim=16)
    with using_threads(1):
        expected = {name: fn() for name, fn in calls.items()}
    with using_threads(8 * CPUS):
        for name, fn in calls.items():
            assert torch.equal(fn(), expected[name]), name
    assert _pool_workers() <= max(0, CPUS - 1)


def _run_in_child(child, timeout=120):
    """Forks; child() runs in the child, whose exit status (0 when child() returns True) is
    returned. A child still running after `timeout` seconds (a deadlock) is killed."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = 0 if child() else 1
        finally:
            os._exit(status)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung for {timeout} s")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_pool_after_fork(pool):
    """The parent's workers (or OpenMP team) do not survive fork(). The child keeps the same
    pool, reset (no workers, fresh locks, no team), and four Python threads using it at once
    get the parent's results and start no more than one pool's workers."""
    calls = op_calls(tokens=49, channels=64, heads=4, key_dim=16)
    names = list(calls)
    with using_threads(2):
        expected = {name: fn() for name, fn in calls.items()}
        if pool == "own pool":
            assert _pool_workers() >= min(1, CPUS - 1)

        def child():
            # The parent's OpenMP team did not survive either: the child runs on the pool.
            if _pool_workers() != 0 or cpu._lib().team_runner_active():
                return False
            results = run_in_threads(lambda i: [(n, calls[n]()) for n in names * 5])
            same = all(torch.equal(out, expected[n]) for outs in results for n, out in outs)
            return same and _pool_workers() == min(1, CPUS - 1)

        assert _run_in_child(child) == 0
        for name, fn in calls.items():              # and the parent's pool still works
            assert torch.equal(fn(), expected[name]), name


_ALLOCATION_FAILS_IN_A_TASK = r"""
import resource, sys, torch
from levit_kernels import ops

def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

from levit_kernels import cpu
print(cpu.threads_note())
torch.set_num_threads(2)
x, w = torch.randn(64, 64), torch.randn(64, 64)
expected = ops.linear(x, w)        # the pool's worker (or team) is started before the limit
# 2 GB of address space to spare; each task's Kt scratch buffer (Dk x Nk floats) wants 4.3 GB.
limit = vm_bytes() + 2 * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
d = 32767
q = torch.randn(2, 1, 1, d)
k = torch.randn(1, 1, 1, d).expand(2, 1, d, d)
v = torch.randn(1, 1, 1, 1).expand(2, 1, d, 1)
bias = torch.randn(1, 1, d)
for attempt in range(3):
    try:
        ops.attention(q, k, v, bias, 0.01, False)
        sys.exit("the attention did not fail to allocate")
    except MemoryError:
        pass
    assert torch.equal(ops.linear(x, w), expected)   # the pool still works
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_a_task_that_cannot_allocate_raises_memory_error_and_the_pool_goes_on(pool):
    """std::bad_alloc in a pool task (a scratch buffer past the address-space limit) becomes a
    MemoryError in the caller once every worker has left the job; the pool then runs the
    next jobs. (It used to leave the job open with a dangling task function: a crash.)"""
    env = dict(os.environ, LEVIT_THREAD_POOL="own" if pool == "own pool" else "auto")
    result = subprocess.run([sys.executable, "-c", _ALLOCATION_FAILS_IN_A_TASK], env=env,
                            capture_output=True, text=True, timeout=300)
    note, _, ok = result.stdout.strip().rpartition("\n")
    assert result.returncode == 0 and ok == "ok", result.stderr[-2000:]
    assert note.startswith("PyTorch's OpenMP team" if pool == "openmp team" else
                           "the kernels' own pool"), note
