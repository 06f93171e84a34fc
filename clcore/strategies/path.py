"""The path integral RWalk and SI share: each step's first-order change of the task loss.

Per training step ``t``, with ``g_t`` the task loss's gradient from the step's own backward (before
any penalty gradient is added) and ``theta_t`` the parameters before the optimiser step::

    path <- path - g_t * (theta_{t+1} - theta_t)

`PathStep.record` keeps ``g_t`` and ``theta_t`` (in ``add_penalty_grad``, before the penalty's gradient
goes into ``p.grad``) and `PathStep.add_to` adds the step to a path (in ``after_step``). The path
itself belongs to the strategy (it is part of its state); this holds per-step scratch only.
"""

from __future__ import annotations

import torch


class PathStep:
    """Scratch for one step's path term; ``before`` is free between steps (a strategy may reuse it)."""

    def __init__(self, params: list[torch.Tensor]):
        self.grad = [torch.empty_like(p) for p in params]
        self.before = [torch.empty_like(p) for p in params]

    @torch.no_grad()
    def record(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        torch._foreach_copy_(self.grad, grads)
        torch._foreach_copy_(self.before, params)

    @torch.no_grad()
    def add_to(self, path: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        torch._foreach_sub_(self.before, params)             # theta_t - theta_{t+1}
        torch._foreach_addcmul_(path, self.grad, self.before)  # path -= g (theta_{t+1} - theta_t)


__all__ = ["PathStep"]
