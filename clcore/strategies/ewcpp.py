"""EWC++ (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning", section 4.1): RWalk's running
Fisher without its path-integral score.

Per training step ``t`` (``g_t`` the batch-mean gradient of the task loss alone, from the training step's
own backward, in train mode)::

    F <- alpha * g_t^2 + (1 - alpha) * F          the first step of all sets F = g_1^2; never reset

At the end of task ``k`` the penalty's weight and anchor are replaced (not accumulated: the running
Fisher already carries the earlier tasks)::

    w = F / max(F)        (0 when max(F) is 0)        theta* <- theta_end(k)

and while training the tasks after it::

    P(theta) = lambda * sum_i w_i (theta_i - theta*_i)^2,     dP/dtheta = 2 lambda w (theta - theta*)

This is also what the A-GEM code release (facebookresearch/agem, ``model/model.py``) runs as "EWC": its
``create_fisher_ops`` keeps the same exponential average (``fisher_ema_decay`` 0.9 on the new term, never
reset between tasks), and ``task_updates`` copies it at the end of each task, normalises it and replaces
the anchor; its penalty has no 1/2. So A-GEM's EWC ``lambda`` (``--synap-stgth``) is this ``lambda`` and
its ``fisher_ema_decay`` this ``alpha``; it folds the squared gradients into the average every 10 steps
as their mean (``fisher_update_after``): ``fisher_every: 10`` here (`update_running_fisher`; the default, 1,
folds each step's in, as the RWalk paper writes it). One difference stays, written down rather than copied:
it min-max normalises, ``(F - min F) / (max F - min F)``, where this divides by the maximum (equal whenever
some weight never gets a gradient, as the weights of MNIST's always-blank border pixels; that minimum is 0).

Cost per step: one elementwise update of F and the penalty's gradient; no second pass and no snapshot of
the parameters (RWalk's path integral needs one).
"""

from __future__ import annotations

import torch
from torch import nn

from clcore.data import Task
from clcore.fisher import gradients
from clcore.params import Param, Params
from clcore.strategies.quadratic import QuadraticRegulariser
from clcore.strategies.rwalk import drop_fisher_window, fisher_window, inverse_max, update_running_fisher


class EWCpp(QuadraticRegulariser):
    """EWC++ with penalty weight ``lambda_`` and running-Fisher factor ``alpha`` (RWalk's Fisher term alone)."""

    name = "ewcpp"
    params = Params(
        Param("lambda", float, 1.0, "penalty weight (no 1/2, as in RWalk and A-GEM's code)", low=0, low_open=True,
              mutable=True),
        Param("alpha", float, 0.9, "running-Fisher factor: the weight of the new squared gradient", low=0, high=1,
              mutable=True),
        Param("fisher_every", int, 1, "steps whose squared gradients are averaged into each running-Fisher update "
                                      "(A-GEM's code: 10)", low=1),
    )

    # F, the running Fisher; w, the penalty weight (after the first task); theta*_k, the parameters at the
    # end of the last task
    tensor_state = ("fisher", "weights", "anchor", "fisher_sum")
    counters = ("steps", "steps_in_task", "tasks_seen")  # steps: all tasks
    weights_of = "weights"

    @torch.no_grad()
    def add_penalty_grad(self, model: nn.Module) -> None:
        params = self._params(model)
        grads = gradients(params)  # the task loss's gradient: nothing has been added yet
        update_running_fisher(self, grads)
        self.add_quadratic_grad(params, grads)

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        self.steps_in_task += 1

    def after_task(self, model: nn.Module, task: Task) -> None:
        if self.steps_in_task == 0:
            raise RuntimeError("EWC++.after_task: no training step was taken on this task")
        with torch.no_grad():
            self.weights = torch._foreach_mul(self.fisher, inverse_max(self.fisher))
            self.anchor = [p.detach().clone() for p in self._params(model)]
        self.consolidated()
        self.steps_in_task = 0
        self.tasks_seen += 1
        drop_fisher_window(self)

    def allocate(self, params: list[nn.Parameter]) -> None:
        self.fisher = [torch.zeros_like(p) for p in params]
        self.fisher_sum = fisher_window(params, self.fisher_every)


__all__ = ["EWCpp"]
