"""Strategies: one regulariser each, on the contract in `clcore.strategies.base`.

`catalogue` lists them and their declared hyperparameters without importing torch; the classes
themselves are imported when first used (``from clcore.strategies import EWC`` works too).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from clcore.strategies import catalogue

if TYPE_CHECKING:  # pragma: no cover
    from clcore.config import StrategyConfig
    from clcore.strategies.base import Strategy


def strategy_class(name: str) -> type["Strategy"]:
    """The class of strategy ``name``, imported now; its ``params`` must be what the catalogue read."""
    info = catalogue.info(name)
    cls = getattr(importlib.import_module(info.module), info.class_name)
    if cls.params != info.params:
        raise TypeError(f"{info.module}.{info.class_name}.params changed after its source was read")
    return cls


def build_strategy(config: "StrategyConfig") -> "Strategy":
    """The strategy ``config`` names, with its hyperparameters."""
    return strategy_class(config.name)(**config.params)


def __getattr__(name: str):
    """``Strategy``, ``Naive``, ``Joint`` and every strategy class by its class name, imported on use."""
    if name in ("Strategy", "Naive", "Joint"):
        return getattr(importlib.import_module("clcore.strategies.base"), name)
    for info in catalogue.strategies().values():
        if info.class_name == name:
            return strategy_class(info.name)
    raise AttributeError(f"module 'clcore.strategies' has no attribute {name!r}")


__all__ = ["Strategy", "Naive", "Joint", "build_strategy", "strategy_class", "catalogue"]
