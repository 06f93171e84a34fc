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

import weakref

import torch
from torch import nn

from clcore.data import Task
from clcore.fisher import gradients, ordered_parameters
from clcore.params import Param, Params
from clcore.strategies.base import Strategy
from clcore.strategies.ewc import QuadraticPenalty
from clcore.strategies.path import PathStep

_TENSOR_STATE = ("omega", "importance", "anchor", "task_start")


class SI(Strategy):
    """Synaptic Intelligence: importance from each parameter's path integral of the task loss."""

    name = "si"
    params = Params(
        Param("lambda", float, 1.0, "penalty weight (the paper's c; no 1/2)", low=0, low_open=True, mutable=True),
        Param("xi", float, 0.1, "damping of omega / (Delta^2 + xi) at the end of a task", low=0, low_open=True,
              mutable=True),
    )

    def __init__(self, **params):
        super().__init__(**params)
        # Statistics (what `state_dict` holds), lists aligned with `param_names`.
        self.param_names: list[str] = []
        self.omega: list[torch.Tensor] = []       # this task's path integral
        self.importance: list[torch.Tensor] = []  # Omega, summed over the tasks seen
        self.anchor: list[torch.Tensor] = []      # theta*, the parameters at the end of the last task
        self.task_start: list[torch.Tensor] = []  # the parameters when this task began
        self.steps_in_task = 0
        self.tasks_seen = 0
        self._step: PathStep | None = None
        self._quadratic: QuadraticPenalty | None = None
        self._bound: tuple[weakref.ref, list[nn.Parameter]] | None = None

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def before_task(self, model: nn.Module, task: Task) -> None:
        self._bound = None
        params = self._params(model)
        torch._foreach_copy_(self.task_start, params)
        torch._foreach_zero_(self.omega)
        self.steps_in_task = 0

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if not self.tasks_seen:
            return super().penalty(model)
        params = self._params(model)
        return self.lambda_ * sum((w * (p - a).square()).sum() for p, w, a in zip(params, self.importance, self.anchor))

    @torch.no_grad()
    def add_penalty_grad(self, model: nn.Module) -> None:
        params = self._params(model)
        grads = gradients(params)  # the task loss's gradient: nothing has been added yet
        self._step.record(params, grads)
        if self.tasks_seen:
            self._quadratic.add_grad(params, grads)  # grad += 2 lambda Omega (theta - theta*)

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
        torch._foreach_add_(self.importance, torch._foreach_div(self.omega, denominator))
        self.anchor = [p.detach().clone() for p in params]
        self._quadratic = self._make_quadratic()
        torch._foreach_zero_(self.omega)
        self.tasks_seen += 1

    def importance_norm(self) -> float | None:
        if not self.tasks_seen:
            return None
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.importance))))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {"param_names": list(self.param_names), "tasks_seen": self.tasks_seen,
                 "steps_in_task": self.steps_in_task}
        state.update({k: dict(zip(self.param_names, getattr(self, k))) for k in _TENSOR_STATE})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.param_names = list(state["param_names"])
        for k in _TENSOR_STATE:
            setattr(self, k, [state[k][name].clone() for name in self.param_names] if state[k] else [])
        self.tasks_seen, self.steps_in_task = int(state["tasks_seen"]), int(state["steps_in_task"])
        self._quadratic = self._make_quadratic() if self.tasks_seen else None
        self._step, self._bound = None, None

    # ------------------------------------------------------------------ helpers
    def _make_quadratic(self) -> QuadraticPenalty:
        return QuadraticPenalty(torch._foreach_mul(self.importance, 2.0 * self.lambda_), self.anchor)

    def _params(self, model: nn.Module) -> list[nn.Parameter]:
        """Trainable parameters of ``model`` in `param_names` order; allocates the state on first use."""
        if self._bound is not None and self._bound[0]() is model:
            return self._bound[1]
        self.param_names, params = ordered_parameters(model, self.param_names, "SI")
        with torch.no_grad():
            if not self.importance:
                self.omega, self.importance = ([torch.zeros_like(p) for p in params] for _ in range(2))
                self.task_start = [p.detach().clone() for p in params]
            elif self.importance[0].device != params[0].device:
                for k in _TENSOR_STATE:
                    setattr(self, k, [v.to(params[0].device) for v in getattr(self, k)])
                self._quadratic = self._make_quadratic() if self.tasks_seen else None
        self._step = PathStep(params)
        self._bound = (weakref.ref(model), params)
        return params


__all__ = ["SI"]
