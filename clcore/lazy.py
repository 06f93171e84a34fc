"""A package's names imported on first use (PEP 562 module ``__getattr__``), so importing the package
costs nothing until a name is used: ``__getattr__, __dir__ = lazy_exports(__name__, {name: module})``."""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``exports`` (name -> module defining it)."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *exports])

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
