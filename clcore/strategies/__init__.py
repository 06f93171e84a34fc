"""Strategies: one regulariser each, on the contract in `clcore.strategies.base`."""

from __future__ import annotations

from clcore.config import StrategyConfig
from clcore.strategies.base import Joint, Naive, Strategy


def build_strategy(config: StrategyConfig) -> Strategy:
    """The strategy ``config`` names, with its hyperparameters."""
    if config.name == "naive":
        return Naive()
    if config.name == "joint":
        return Joint()
    if config.name == "ewc":
        from clcore.strategies.ewc import EWC

        return EWC(lambda_=config.lambda_, mode=config.mode, decay_factor=config.decay_factor,
                   fisher=config.fisher, fisher_samples=config.fisher_samples,
                   fisher_batch_size=config.fisher_batch_size, keep_importance_data=config.keep_importance_data)
    if config.name == "rwalk":
        from clcore.strategies.rwalk import RWalk

        return RWalk(lambda_=config.lambda_, alpha=config.alpha, delta_t=config.delta_t, score_clip=config.score_clip)
    raise ValueError(f"strategy.name: unknown strategy {config.name!r}; allowed: naive, joint, ewc, rwalk")


__all__ = ["Strategy", "Naive", "Joint", "build_strategy"]
