"""Benchmark setup: the Triton interpreter on machines without CUDA (as in tests/), and the
machine facts pytest-benchmark writes next to every result."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_benchmark_update_machine_info(config, machine_info):
    from levit_kernels.tools.info import collect
    machine_info["levit_kernels"] = collect()
