"""The ``wsizarr`` command: one module per command, the shared options in ``_common``."""

from ._main import main

__all__ = ["main"]
