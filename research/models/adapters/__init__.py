"""Backbone families (``model.arch``), one file each, found by discovery like the methods: a module that fails
to import fails loudly here, and a new file is registered (and tested from the registry) the moment it exists."""

import importlib
import pkgutil

from research.models.adapters.base import Adapter, InputEncoder, adapter, adapter_names, register_adapter

# The contract's families first, in the contract's order (mlp | cnn | hf | timm | torchvision | custom), so that
# error messages list them so; then any other family file.
_FIRST = ["mlp", "cnn", "hf", "timm", "torchvision", "custom"]
_FOUND = [m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"]
for _name in [n for n in _FIRST if n in _FOUND] + [n for n in _FOUND if n not in _FIRST]:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["Adapter", "InputEncoder", "adapter", "adapter_names", "register_adapter"]
