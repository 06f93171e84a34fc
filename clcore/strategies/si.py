"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence").

Per training step ``t`` of task ``k`` (``g_t`` the task loss's gradient from the step's own backward,
``theta_t`` the parameters before the optimiser step; the step is `clcore.strategies.path`'s, which
RWalk shares)::

    omega <- omega - g_t * (theta_{t+1} - theta_t)            the path integral (eq. 3's summand)

At the end of task ``k``, with ``Delta = theta_end(k) - theta_start(k)`` (the parameters when task k
ended and when it began)::

    Omega <- Omega + omega / (Delta^2 + xi)                   (eq. 5)
    theta* <- theta_end(k),   omega <- 0

and while training the tasks after it (eq. 4, no 1/2, as in the paper)::

    P(theta) = lambda * sum_i Omega_i (theta_i - theta*_i)^2,     dP/dtheta = 2 lambda Omega (theta - theta*)

``lambda`` is the paper's ``c`` and ``xi`` its damping ``xi``.

Conventions and how peers differ:

- ``g_t`` is the gradient of the task loss alone, so ``omega`` measures each parameter's share of the
  drop in the task's own loss (the paper's definition). Avalanche's SynapticIntelligencePlugin and
  van de Ven's continual-learning code read ``p.grad`` after the backward of the regularised loss, so
  from the second task on their ``omega`` also integrates the penalty's gradient.
- ``Omega`` is not clipped: a parameter whose path raised the task loss gets a negative term, as in
  the paper's equations.
- Intervals are whole tasks: ``omega`` restarts with each task, and ``Delta`` is measured from the
  parameters at the task's start (which are the previous task's anchor when nothing else moved them).
- One forward and one backward per step, in train mode; the path costs two passes over parameter
  memory per step (the same as RWalk's).
"""

from __future__ import annotations

import torch
from torch import nn

from clcore.data import Task
from clcore.fisher import gradients
from clcore.params import Param, Params
from clcore.strategies.path import PathStep
from clcore.strategies.quadratic import QuadraticRegulariser


class SI(QuadraticRegulariser):
    """Synaptic Intelligence: importance from each parameter's path integral of the task loss."""

    name = "si"
    params = Params(
        Param("lambda", float, 1.0, "penalty weight (the paper's c; no 1/2)", low=0, low_open=True, mutable=True),
        Param("xi", float, 0.1, "damping of omega / (Delta^2 + xi) at the end of a task", low=0, low_open=True,
              mutable=True),
    )

    # Statistics, lists aligned with `param_names`: this task's path integral omega; Omega, summed over the
    # tasks seen (empty before the first); theta*, the parameters at the end of the last task; the
    # parameters when this task began.
    tensor_state = ("omega", "importance", "anchor", "task_start")
    counters = ("tasks_seen", "steps_in_task")

    def __init__(self, **params):
        super().__init__(**params)
        self._step: PathStep | None = None

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def before_task(self, model: nn.Module, task: Task) -> None:
        super().before_task(model, task)
        params = self._params(model)
        torch._foreach_copy_(self.task_start, params)
        torch._foreach_zero_(self.omega)
        self.steps_in_task = 0

    @torch.no_grad()
    def add_penalty_grad(self, model: nn.Module) -> None:
        params = self._params(model)
        grads = gradients(params)  # the task loss's gradient: nothing has been added yet
        self._step.record(params, grads)
        self.add_quadratic_grad(params, grads)  # grad += 2 lambda Omega (theta - theta*)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        self._step.add_to(self.omega, self._params(model))
        self.steps_in_task += 1

    @torch.no_grad()
    def after_task(self, model: nn.Module, task: Task) -> None:
        if self.steps_in_task == 0:
            raise RuntimeError("SI.after_task: no training step was taken on this task")
        params = self._params(model)
        delta = torch._foreach_sub(params, self.task_start)
        denominator = torch._foreach_add(torch._foreach_mul(delta, delta), self.xi)
        share = torch._foreach_div(self.omega, denominator)
        self.importance = torch._foreach_add(self.importance, share) if self.importance else share
        self.anchor = [p.detach().clone() for p in params]
        self.consolidated()
        torch._foreach_zero_(self.omega)
        self.tasks_seen += 1

    # ------------------------------------------------------------------ binding
    def allocate(self, params: list[nn.Parameter]) -> None:
        self.omega = [torch.zeros_like(p) for p in params]
        self.task_start = [p.detach().clone() for p in params]

    def bound(self, params: list[nn.Parameter]) -> None:
        self._step = PathStep(params)

    def unbound(self) -> None:
        self._step = None


__all__ = ["SI"]
