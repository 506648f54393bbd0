"""Shared test setup.

Without a GPU the Triton kernels run under Triton's interpreter, which must be switched on
before `triton` is first imported anywhere in the process.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
