"""Riemannian Walk (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning").

Equation numbers are those Avalanche's RWalkPlugin cites. Per training step ``t`` (parameters ``theta_t`` before the optimiser step, ``g_t`` the gradient of the
task loss alone, taken from the training step's own backward, in train mode)::

    F      <- alpha * g_t^2 + (1 - alpha) * F          EWC++ Fisher (eq. 6); the first step sets F = g_1^2
    path   <- path - g_t * (theta_{t+1} - theta_t)     first-order loss change (eq. 7; clcore.strategies.path)

Every ``delta_t`` steps, and at the end of every task for the steps left over, the interval
``[t1, t2]`` is closed (eq. 7)::

    s_task <- s_task + path / (1/2 * F * (theta_t2 - theta_t1)^2 + eps)      eps = float32 machine eps
    path   <- 0

``eps`` keeps the division finite (never 0/0). At the end of task ``k`` scores of successive tasks are
averaged, ``s <- s_task`` after the first task and ``s <- (s + s_task) / 2`` after later ones, and the
penalty weight is the Fisher and the positive score, each normalised by its maximum over all
parameters (a term whose maximum is 0 contributes 0)::

    w = F / max(F) + relu(s) / max(relu(s))

The penalty while training task ``k + 1`` (eq. 8; no 1/2, as in the paper and Avalanche)::

    P(theta) = lambda * sum_i w_i (theta_i - theta*_{k,i})^2,     dP/dtheta = 2 lambda w (theta - theta*_k)

Conventions and how peers differ:

- ``alpha`` weights the *new* squared gradient, as in the paper and Avalanche's RWalkPlugin
  (``ewc_alpha``). FACIL's ``alpha`` weights the *old* Fisher (``F = alpha F_old + (1 - alpha) F_new``)
  and mixes whole-task Fisher estimates once per task rather than per step, so its values do not port.
- ``lambda`` equals Avalanche's ``ewc_lambda`` (same penalty, same normalisation, same eps).
- ``g_t`` is the batch-mean gradient of the task loss (what every implementation uses), so ``F``
  shrinks roughly like 1/batch_size; ``w`` is normalised by its maximum, which removes that scale from
  the Fisher term. Avalanche recomputes ``g_t`` with a second forward and backward pass in eval mode
  and leaves the model in eval mode for all of training (dropout off, BatchNorm frozen); here the
  gradient is the training step's own, the model stays in train mode, and each step costs one forward
  and one backward.
- ``score_clip`` chooses where negative scores are cut and the interval constants. ``average``
  (the default; Avalanche's RWalkPlugin) is what is written above: intervals add up unclipped,
  ``eps`` is float32's machine epsilon, the denominator carries the 1/2, and ``relu`` is applied once,
  to the averaged score, when the weights are formed. ``interval`` follows the authors' code
  (facebookresearch/agem, ``model/model.py``, ``update_big_omega_riemann``): every closed interval is
  clipped on its own, with ``eps = 1e-3`` (its ``PARAM_XI_STEP``) and no 1/2::

      s_task <- s_task + relu(path / (F * (theta_t2 - theta_t1)^2 + 1e-3))

  The averaging over tasks and the max-normalisation stay as above in both (the authors' code
  min-max normalises and adds the average to the old score, ``s <- s + (s + s_task)/2``; neither is
  copied).
- Intervals restart with each task and the last, shorter interval of a task is scored too (Avalanche
  counts ``delta_t`` across tasks and drops the remainder, which gives NaN weights when a task has fewer
  than ``delta_t`` steps; here a warning says so and the weights stay finite).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from clcore.data import Task
from clcore.fisher import gradients
from clcore.params import Param, Params
from clcore.strategies.path import PathStep
from clcore.strategies.quadratic import QuadraticRegulariser


class RWalk(QuadraticRegulariser):
    """RWalk with penalty weight ``lambda_``, EWC++ factor ``alpha``, score interval ``delta_t`` steps and
    where scores are clipped, ``score_clip`` (``average`` or ``interval``, see the module docstring)."""

    name = "rwalk"
    params = Params(
        Param("lambda", float, 1.0, "penalty weight (no 1/2, as in the paper and Avalanche)", low=0, low_open=True,
              mutable=True),
        Param("alpha", float, 0.9, "EWC++ factor: the weight of the new squared gradient", low=0, high=1,
              mutable=True),
        Param("delta_t", int, 10, "training steps per path-integral score interval", low=1, mutable=True),
        Param("fisher_every", int, 1, "steps whose squared gradients are averaged into each running-Fisher update "
                                      "(A-GEM's code: 10)", low=1),
        Param("score_clip", str, "average", "where negative scores are cut: the task average (Avalanche) or "
                                            "each interval (the authors' code)", choices=("average", "interval")),
    )
    # score_clip -> (eps, factor of F (theta_t2 - theta_t1)^2 in the interval's denominator, clip each interval)
    SCORE_CLIPS = {"average": (float(torch.finfo(torch.float32).eps), 0.5, False), "interval": (1e-3, 1.0, True)}

    # Statistics (what `state_dict` holds), lists aligned with `param_names`: F, the EWC++ running Fisher;
    # s, the score averaged over the tasks seen; w, the penalty weight (after the first task); theta*_k, the
    # parameters at the end of the last task; s_task, this task's closed intervals; path, the open
    # interval's loss change; theta_t1, the parameters when the interval opened.
    tensor_state = ("fisher", "score", "weights", "anchor", "task_score", "path_loss", "interval_start", "fisher_sum")
    counters = ("steps", "steps_in_task", "steps_in_interval", "tasks_seen")  # steps: all tasks
    weights_of = "weights"

    def __init__(self, **params):
        super().__init__(**params)
        self._step: PathStep | None = None  # per-step scratch: the task gradient, the parameters before the step

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def before_task(self, model: nn.Module, task: Task) -> None:
        super().before_task(model, task)
        params = self._params(model)
        torch._foreach_copy_(self.interval_start, params)
        torch._foreach_zero_(self.path_loss)
        self.steps_in_interval = 0

    @torch.no_grad()
    def add_penalty_grad(self, model: nn.Module) -> None:
        params = self._params(model)
        grads = gradients(params)  # the task loss's gradient: nothing has been added yet
        self._step.record(params, grads)
        update_running_fisher(self, grads)
        self.add_quadratic_grad(params, grads)  # grad += 2 lambda w (theta - theta*)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        params = self._params(model)
        self._step.add_to(self.path_loss, params)
        self.steps += 1
        self.steps_in_task += 1
        self.steps_in_interval += 1
        if self.steps_in_interval == self.delta_t:
            self._close_interval(params)

    def after_task(self, model: nn.Module, task: Task) -> None:
        if self.steps_in_task == 0:
            raise RuntimeError("RWalk.after_task: no training step was taken on this task")
        if self.steps_in_task < self.delta_t:  # warned here, not under a decorator, so it names the caller
            warnings.warn(f"RWalk: task {task.id} had {self.steps_in_task} training steps, fewer than "
                          f"delta_t={self.delta_t}; its score comes from one interval of {self.steps_in_task} "
                          f"steps", RuntimeWarning, stacklevel=2)
        with torch.no_grad():
            self._consolidate(self._params(model))

    def _consolidate(self, params: list[nn.Parameter]) -> None:
        """Close the last interval, average the task's score in, and set the penalty's weights and anchor."""
        if self.steps_in_interval > 0:
            self._close_interval(params)
        if self.tasks_seen == 0:
            self.score = [s.clone() for s in self.task_score]
        else:
            self.score = torch._foreach_mul(torch._foreach_add(self.score, self.task_score), 0.5)
        positive = [s.clamp(min=0) for s in self.score]
        self.weights = torch._foreach_add(torch._foreach_mul(self.fisher, inverse_max(self.fisher)),
                                          torch._foreach_mul(positive, inverse_max(positive)))
        self.anchor = [p.detach().clone() for p in params]
        self.consolidated()
        torch._foreach_zero_(self.task_score)
        self.steps_in_task = 0
        self.tasks_seen += 1
        drop_fisher_window(self)

    # ------------------------------------------------------------------ binding
    def allocate(self, params: list[nn.Parameter]) -> None:
        self.fisher, self.task_score, self.path_loss = ([torch.zeros_like(p) for p in params] for _ in range(3))
        self.fisher_sum = fisher_window(params, self.fisher_every)
        self.interval_start = [p.detach().clone() for p in params]

    def bound(self, params: list[nn.Parameter]) -> None:
        self._step = PathStep(params)

    def unbound(self) -> None:
        self._step = None

    def _close_interval(self, params: list[nn.Parameter]) -> None:
        """s_task += path / (c F (theta - theta_t1)^2 + eps), clipped here for ``interval``; open the next
        interval here."""
        eps, factor, clip = self.SCORE_CLIPS[self.score_clip]
        denominator = self._step.before  # per-step scratch, free between steps
        torch._foreach_copy_(denominator, params)
        torch._foreach_sub_(denominator, self.interval_start)
        torch._foreach_mul_(denominator, denominator)
        torch._foreach_mul_(denominator, self.fisher)
        if factor != 1.0:
            torch._foreach_mul_(denominator, factor)
        torch._foreach_add_(denominator, eps)
        torch._foreach_div_(self.path_loss, denominator)
        if clip:
            torch._foreach_clamp_min_(self.path_loss, 0.0)
        torch._foreach_add_(self.task_score, self.path_loss)
        torch._foreach_zero_(self.path_loss)
        torch._foreach_copy_(self.interval_start, params)
        self.steps_in_interval = 0


def update_running_fisher(strategy, grads: list[torch.Tensor]) -> None:
    """EWC++'s running Fisher of ``strategy`` (RWalk or EWC++), in place, before its ``steps`` and
    ``steps_in_task`` count this step. With ``fisher_every`` 1: ``F <- alpha g^2 + (1 - alpha) F`` each step,
    the first step of all setting ``F = g^2``. With ``fisher_every`` k > 1, as A-GEM's code
    (``fisher_update_after``): the squared gradients are summed, and every k-th step of a task
    ``F <- alpha * sum / k + (1 - alpha) F`` from ``F = 0``; the sum is emptied then and at each task's end."""
    every = strategy.fisher_every
    if every == 1:
        if strategy.steps == 0:
            torch._foreach_copy_(strategy.fisher, grads)
            torch._foreach_mul_(strategy.fisher, grads)
        else:
            torch._foreach_mul_(strategy.fisher, 1.0 - strategy.alpha)
            torch._foreach_addcmul_(strategy.fisher, grads, grads, value=strategy.alpha)
        return
    torch._foreach_addcmul_(strategy.fisher_sum, grads, grads)
    if (strategy.steps_in_task + 1) % every == 0:
        torch._foreach_mul_(strategy.fisher, 1.0 - strategy.alpha)
        torch._foreach_add_(strategy.fisher, strategy.fisher_sum, alpha=strategy.alpha / every)
        torch._foreach_zero_(strategy.fisher_sum)


def fisher_window(params: list[nn.Parameter], every: int) -> list[torch.Tensor]:
    """The sum of squared gradients `update_running_fisher` keeps for ``fisher_every`` > 1 (none for 1)."""
    return [torch.zeros_like(p) for p in params] if every > 1 else []


def drop_fisher_window(strategy) -> None:
    """At a task's end: a running-Fisher window still open is dropped (A-GEM's code)."""
    if strategy.fisher_sum:
        torch._foreach_zero_(strategy.fisher_sum)


def inverse_max(tensors: list[torch.Tensor]) -> torch.Tensor:
    """1 / max over all elements of ``tensors`` (non-negative), or 0 when that maximum is 0."""
    largest = torch.stack([t.max() for t in tensors]).max()
    return torch.where(largest > 0, largest.reciprocal(), torch.zeros_like(largest))


__all__ = ["RWalk", "drop_fisher_window", "fisher_window", "inverse_max", "update_running_fisher"]
