"""The forgetting lab: measure what a pretrained model forgets while it is fine-tuned, under a chosen method."""

import sys

# Compiled bytecode halves the import time of torch & co. Some machines set PYTHONDONTWRITEBYTECODE, so nothing
# would ever be compiled, and uv's own `compile-bytecode` setting recompiles the whole environment on every
# `uv run` (astral-sh/uv#12202: 1-3 s each time). Instead, inside a virtual environment (the project's .venv),
# each module is compiled once, the first time it is imported after this package, and reused from then on.
if sys.prefix != sys.base_prefix:
    sys.dont_write_bytecode = False
