"""Backbone families (``model.arch``), one file each, found by discovery like the methods: a module that fails
to import fails loudly here, and a new file is registered (and tested from the registry) the moment it exists."""

import importlib
import pkgutil

from research.models.adapters.base import Adapter, InputEncoder, adapter, adapter_names, register_adapter

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Adapter", "InputEncoder", "adapter", "adapter_names", "register_adapter"]
