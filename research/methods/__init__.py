"""Anti-forgetting methods, one file each, found by discovery.

Importing this package imports every module in it, so a new method file is registered (and picked up by the
registry-generated tests) the moment it exists. A module that fails to import fails loudly here: a method
that silently disappears from a comparison is worse than a crash.
"""

import importlib
import pkgutil

from research.methods.base import FinetuneContext, HeadBatch, Method, MethodConfig, TrainStep
from research.methods.registry import (
    build_method,
    describe_methods,
    method_class,
    method_config,
    method_names,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "FinetuneContext",
    "HeadBatch",
    "Method",
    "MethodConfig",
    "TrainStep",
    "build_method",
    "describe_methods",
    "method_class",
    "method_config",
    "method_names",
    "register",
]
