"""StateKey: everything a fused plan's math depends on, recorded when the plan is built and
read back on every call to tell whether the plan is still the model's.

The plan (plan.py) is derived from the model: its tensors, its structure and plain Python
attributes. The key records

* every submodule's class (parametrize swaps a module's class in place);
* every module's `_modules`, `_parameters` and `_buffers` dict, as shallow copies: a child,
  parameter or buffer replaced, added or removed (`model.head = ...`, `weight = Parameter(...)`,
  `torch.func.functional_call`, prune and parametrize moving `weight`) changes the dict;
* every tensor's storage address and version counter: in-place edits (`p.mul_()`,
  `load_state_dict`, a training forward updating BatchNorm statistics) bump the counter,
  `p.data = t` moves the storage;
* every module's public plain attributes (BatchNorm's `eps`, an attention's `scale`,
  `model.distillation`, `training`, a parametrization's own settings...): nothing tells which
  ones a layer reads, so all are recorded rather than a list that could fall behind; and
  every module's count of attributes, so that a new one shows too (`block.forward = ...` set
  on the instance, which the plain forward would call);
* the forward hooks of every module, and the global ones: the plan runs without them.

Cost: the checks are C-level map() loops over flat lists, with hooks read again only when
`RemovableHandle.next_id` shows that some hook was registered somewhere since. What cannot be
seen: in-place edits through `.data` (`p.data.mul_()`, which has a version counter of its
own) and in-place edits of inference tensors (which have none); `refresh_fused()` after those.
"""
from __future__ import annotations

import itertools
import operator
from typing import List

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

_VERSION = operator.attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr
_GET_ITEMS = operator.itemgetter.__call__
_generations = itertools.count(1)

# Module-level hooks run by every module's call; registered through torch.nn.modules.module
# (register_module_forward_hook / _pre_hook).
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks")


def _public_attributes(module: nn.Module) -> List[str]:
    """The module's own plain attributes: public names in its __dict__ that do not hold a
    tensor (those are tensor state, or values derived from it, like prune's `weight`)."""
    return [name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, torch.Tensor)]


def _global_hooks():
    module = nn.modules.module
    return [dict(getattr(module, name, {})) for name in GLOBAL_HOOKS]


def _hooks(modules):
    return [dict(d) for m in modules for d in (m._forward_hooks, m._forward_pre_hooks)]


class StateKey:
    """The state a plan for `device` and `dtype` was built from (see the module docstring).

    It holds the submodules, never the model itself: the model holds its plan, which holds
    this key, and a reference back would make a cycle that keeps a deleted model's plan (tens
    of MB of packed weights) alive until the garbage collector runs. `matches` is given the
    model instead."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.generation = next(_generations)          # tells plans apart under torch.compile
        modules = list(model.modules())
        submodules = modules[1:]
        self._root_type = type(model)
        # The root's public names rather than its attribute count: the fused model sets its
        # own private `_plan` after this key is made.
        self._root_names = _public_attributes(model)
        self._root_getter = operator.itemgetter(*self._root_names)
        self._root_attributes = self._root_getter(vars(model))
        self._modules = submodules
        self._types = list(map(type, submodules))
        # Shallow copies of every module's dicts of children, parameters and buffers, in one
        # list compared with one `==` (dict equality compares values by identity first).
        self._dicts = [d for m in modules for d in (m._modules, m._parameters, m._buffers)]
        self._dict_copies = [d.copy() for d in self._dicts]
        tensors = [t for m in modules for d in (m._parameters, m._buffers)
                   for name, t in d.items()
                   if t is not None and name != "num_batches_tracked"]   # folding never reads it
        self._tensors = tensors
        # model.parameters() as it is while the key matches: the same dicts hold the same
        # Parameters, in the order of modules() and of each module's dict.
        self.parameters = [p for m in modules for p in m._parameters.values() if p is not None]
        self._ptrs = list(map(_DATA_PTR, tensors))
        # Inference tensors (made under torch.inference_mode()) have no version counter.
        self._versioned = [t for t in tensors if not t.is_inference()]
        self._versions = list(map(_VERSION, self._versioned))
        # Read from each module's __dict__ (where nn.Module keeps them): faster than getattr,
        # which looks through the class first.
        self._vars = [vars(m) for m in submodules]
        self._getters = [operator.itemgetter(*_public_attributes(m)) for m in submodules]
        self._attributes = list(map(_GET_ITEMS, self._getters, self._vars))
        self._sizes = list(map(len, self._vars))
        # The model's own hooks run around any forward of it, fused or not: not recorded.
        self._hook_id = RemovableHandle.next_id
        self._hooks = _hooks(submodules) + _global_hooks()

    def matches(self, model: nn.Module) -> bool:
        """Whether `model` (the one this key was made from) is still in the recorded state."""
        try:
            return (type(model) is self._root_type
                    and list(map(type, self._modules)) == self._types
                    and self._dicts == self._dict_copies
                    and list(map(_VERSION, self._versioned)) == self._versions
                    and list(map(_DATA_PTR, self._tensors)) == self._ptrs
                    and self._root_getter(vars(model)) == self._root_attributes
                    and _public_attributes(model) == self._root_names
                    and list(map(_GET_ITEMS, self._getters, self._vars)) == self._attributes
                    and list(map(len, self._vars)) == self._sizes
                    and self._hooks_unchanged())
        except Exception:   # noqa: BLE001 - a replaced tensor compares elementwise, or a
            return False    # recorded attribute is gone: either way the state is another

    # A plan that runs the plain layers (a hook made the model one the plan does not fold)
    # compares the hooks on every call: removing a hook does not move next_id, and the model
    # should run fused again once it is gone. Its calls run the plain layers: the cost hides.
    compare_hooks_always = False

    def _hooks_unchanged(self) -> bool:
        if RemovableHandle.next_id == self._hook_id and not self.compare_hooks_always:
            return True             # no hook was registered anywhere since the last look
        if _hooks(self._modules) + _global_hooks() != self._hooks:
            return False
        self._hook_id = RemovableHandle.next_id
        return True

    def has_inference_tensors(self) -> bool:
        return len(self._versioned) != len(self._tensors)
