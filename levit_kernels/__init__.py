"""levit_kernels: fused CPU (C++/AVX2/AVX-512) and GPU (Triton) kernels for LeViT inference.

    model = levit_kernels.LeViT("LeViT-256", fused=True).eval()

Three layers, each importing only the ones below it:

    ops/     the kernels as torch ops, their oracle and launchers   (knows no model)
    model/   LeViT, checkpoints, and FusedLeViT running it on ops/
    tools/   the `levit-kernels` command: bench, profile, biases, summary, info, validate, predict

`levit_kernels.cpu`, `.gpu` and `.reference` name the modules ops/cpu.py, ops/gpu/ and
ops/reference.py. Importing this package never touches CUDA and never requires the compiled
extension: without it the plain PyTorch path still runs (see `levit_kernels.info()`).
"""
import importlib
import importlib.abc
import importlib.util
import sys

from . import ops
from .model import VARIANTS, FrozenLeViT, FusedLeViT, LeViT, LeViTConfig, create_model, \
    freeze, get_config, load_checkpoint, multiply_adds
from .ops import cpu, reference
from .tools.info import info, package_version

__version__ = package_version()
__all__ = ["LeViT", "FusedLeViT", "FrozenLeViT", "LeViTConfig", "VARIANTS", "create_model",
           "freeze", "get_config", "info", "load_checkpoint", "multiply_adds", "ops", "cpu", "gpu",
           "reference"]

# levit_kernels.<name> -> the module it names. `gpu` imports Triton, so it is only imported
# when asked for (`levit_kernels.gpu`, `from levit_kernels import gpu`, `import
# levit_kernels.gpu`).
_ALIASES = {f"{__name__}.cpu": "levit_kernels.ops.cpu",
            f"{__name__}.gpu": "levit_kernels.ops.gpu",
            f"{__name__}.reference": "levit_kernels.ops.reference"}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass     # the target module ran when it was imported


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Makes `import levit_kernels.gpu` (and .cpu, .reference) import the module it names."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _ALIASES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(_ALIASES[fullname]))
        return None


sys.meta_path.append(_AliasFinder())
for _alias, _target in _ALIASES.items():
    if _target in sys.modules:
        sys.modules[_alias] = sys.modules[_target]


def __getattr__(name: str):
    if name == "gpu":
        return importlib.import_module(_ALIASES[f"{__name__}.gpu"])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
