"""Elastic Weight Consolidation: separate (Kirkpatrick et al. 2017) and online (Schwarz et al. 2018).

Penalty convention (with the 1/2 of the papers' Laplace approximation)::

    separate:  P(theta) = lambda/2 * sum_{t<k} sum_i F_{t,i} (theta_i - theta*_{t,i})^2
               (Kirkpatrick et al. 2017, eq. 3, one term per past task t)
    online:    P(theta) = lambda/2 * sum_i F~_i (theta_i - theta*_{k-1,i})^2
               F~ <- decay_factor * F~ + F_{k-1} after each task (decay applies to the old importance,
               never to the new one), anchored at the latest parameters (Schwarz et al. 2018)

Online mode here is Avalanche's (``EWCPlugin(mode="online", decay_factor)``): the penalty weighs
``F~`` itself. Progress & Compress (Schwarz et al. 2018, eq. 8) keep the same running sum
``F* <- gamma F* + F_new`` but weigh the penalty by ``gamma F*``, and so does van de Ven's
continual-learning code (``gamma * fisher`` in its online ``ewc_loss``). Their lambda ports as::

    lambda (here) = gamma * lambda (Progress & Compress, van de Ven et al.),   decay_factor = gamma

(and Avalanche's online ``ewc_lambda`` as ``lambda = 2 * ewc_lambda``, as for separate mode below).

``F_t`` is the diagonal Fisher estimated after task ``t`` on its training split by the estimator
``fisher`` (see `clcore.fisher`) and ``theta*_t`` the parameters at the end of task ``t``.

Separate mode at the cost of one penalty: a sum of quadratics is one quadratic, so we keep::

    A = sum_t F_t,   m = sum_t F_t theta*_t / A   (m = the latest theta* where A == 0),
    c = sum_t sum_i F_{t,i} (theta*_{t,i} - m_i)^2
    P(theta) = lambda/2 * (sum_i A_i (theta_i - m_i)^2 + c),   dP/dtheta = lambda * A * (theta - m)

which equals the explicit sum over tasks exactly; adding a task updates (A, m, c) in closed form
(``c += A F / (A + F) (m - theta*)^2``, numerically stable), so a step costs the same after 1 or
100 tasks.

Porting a peer's lambda (separate mode; online mode as above), with the estimator that computes its
Fisher (`clcore.fisher` names them by label source and grouping):

- Avalanche ``EWCPlugin(ewc_lambda)``: penalty ``ewc_lambda * sum F (theta - theta*)^2`` (no 1/2), Fisher
  of batch-mean gradients over minibatches of ``train_mb_size`` read in the order its benchmarks store
  an experience, grouped by class. With ``fisher="batched_by_class"``, ``fisher_batch_size =
  train_mb_size``, ``fisher_samples=None`` the importances are identical and
  ``lambda (here) = 2 * ewc_lambda``. (``batched`` over the shuffled split gives its formula on another
  order, and a Fisher many times smaller: `benchmarks/fisher_order.py`.)
- van de Ven & Tolias 2019 (``continual-learning``, 2019-2021 releases): penalty ``lambda/2 * sum F
  (theta - theta*)^2``, Fisher of per-sample gradients at the model's argmax label over the task's
  whole training set, in eval mode, restricted to the active classes (the task's own head, or the
  classes seen so far): ``fisher="predicted"`` and ``lambda (here) = lambda``. Their sum is divided by
  ``N - 1`` rather than ``N`` (the last index of their loop), a factor ``N / (N - 1)``: 1.0001 for a
  Split MNIST task. (Their 2022 release defaults to every label weighted by its probability: ``exact``.)
- Hsu et al. 2018 (``Continual-Learning-Benchmark``): penalty ``reg_coef * sum F (theta - theta*)^2``,
  Fisher ``1/B sum_b |b| g_b^2`` of batch-mean gradients at argmax labels over the shuffled training
  loader of batch ``S``: with ``fisher="batched_predicted"`` and ``fisher_batch_size = S``,
  ``lambda (here) = 2 * S * reg_coef`` (exact when every batch is full; the last, smaller one weighs
  ``|b| / S`` there).
- FACIL: penalty ``lamb * sum F (theta - theta*)^2 / 2``, so ``lambda (here) = lamb``; its Fisher
  (``fi_sampling_type="max_pred"``) is batch-mean gradients squared at argmax labels over the full
  batches of its shuffled loader: ``fisher="batched_predicted"`` with ``fisher_batch_size`` its batch
  and ``fisher_samples`` that batch times the number of full batches. Three differences remain: it
  estimates in train mode (dropout and batch statistics on; we never do), takes the argmax over every
  head's outputs, and always mixes ``F = alpha F_old + (1 - alpha) F_new`` (alpha on the old importance,
  anchored at the latest parameters).

Per step the gradient ``lambda * A * (theta - m)`` is added to ``p.grad`` in place in two passes over
memory (`clcore.strategies.quadratic`, which all four regularisers share); the value is only computed when asked for (`penalty`), which the training
loop does once per epoch.
"""

from __future__ import annotations

import torch
from torch import nn

from clcore.data import Task
from clcore.fisher import estimate_fisher
from clcore.params import Param, Params
from clcore.strategies.quadratic import QuadraticPenalty, QuadraticRegulariser


class EWC(QuadraticRegulariser):
    """EWC with ``mode`` ``"separate"`` or ``"online"``; see the module docstring for the formulas.

    ``keep_importance_data`` keeps, for inspection, every task's own importance ``F_t`` and anchor
    ``theta*_t`` in `importance_history` (the penalty itself never needs them).
    """

    name = "ewc"
    params = Params(
        Param("lambda", float, 1.0, "penalty weight (the penalty carries the Laplace 1/2)", low=0, low_open=True,
              mutable=True),
        Param("mode", str, "separate", "separate: one penalty per past task; online: one decayed running importance",
              choices=("separate", "online")),
        Param("decay_factor", float, None, "online mode's factor on the old importance after each task", low=0,
              high=1, low_open=True, applies_when=("mode", "online"), mutable=True),
        Param("fisher", str, "empirical", "importance estimator: label source and grouping (see clcore.fisher)",
              choices=("exact", "empirical", "sampled", "predicted", "batched_exact", "batched", "batched_sampled",
                       "batched_predicted", "batched_by_class_exact", "batched_by_class", "batched_by_class_sampled",
                       "batched_by_class_predicted"), mutable=True),
        Param("fisher_samples", int, None, "training samples of a task the Fisher is estimated on", low=1,
              nullable="all samples", mutable=True),
        Param("fisher_batch_size", int, 256, "samples per pass of the estimator (the batch of a batch grouping)",
              low=1, mutable=True),
        Param("keep_importance_data", bool, False, "keep every task's own F_t and theta*_t for inspection"),
    )

    tensor_state = ("importance", "anchor")  # A and m (separate), or F~ and theta*_{k-1} (online)
    counters = ("tasks_seen",)
    penalty_factor = 0.5

    def __init__(self, **params):
        super().__init__(**params)
        self.offset: torch.Tensor | None = None   # c (separate; 0 online)
        self.importance_history: list[dict] = []  # [{"task", "importance": {name: F_t}, "anchor": {name: theta*_t}}]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        value = super().penalty(model)
        return value + 0.5 * self.lambda_ * self.offset if self.importance else value

    @torch.no_grad()
    def after_task(self, model: nn.Module, task: Task) -> None:
        estimate = estimate_fisher(model, task.train, self.fisher, max_samples=self.fisher_samples,
                                   batch_size=self.fisher_batch_size)
        params = self._params(model)
        new_importance = [estimate[name] for name in self.param_names]
        theta = [p.detach().clone() for p in params]
        if self.keep_importance_data:
            self.importance_history.append({
                "task": task.id,
                "importance": {k: v.clone() for k, v in zip(self.param_names, new_importance)},
                "anchor": {k: v.clone() for k, v in zip(self.param_names, theta)},
            })
        if not self.importance:
            self.importance, self.anchor = new_importance, theta
            self.offset = torch.zeros((), device=theta[0].device)
        elif self.mode == "online":
            self.importance = torch._foreach_add(torch._foreach_mul(self.importance, self.decay_factor),
                                                 new_importance)
            self.anchor = theta
        else:
            importance, anchor = [], []
            for a, m, f, th in zip(self.importance, self.anchor, new_importance, theta):
                total = a + f
                share = torch.where(total > 0, f / total, torch.ones_like(total))  # F / (A + F)
                self.offset = self.offset + (a * share * (m - th).square()).sum()  # A F / (A + F) (m - theta*)^2
                importance.append(total)
                anchor.append(torch.lerp(m, th, share))  # m + F / (A + F) (theta* - m)
            self.importance, self.anchor = importance, anchor
        self.tasks_seen += 1
        self.consolidated()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "offset": self.offset, "importance_history": self.importance_history}

    def load_state_dict(self, state: dict) -> None:
        self.offset = None if state["offset"] is None else state["offset"].clone()
        self.importance_history = list(state["importance_history"])
        super().load_state_dict(state)

    def moved(self, device: torch.device) -> None:
        self.offset = self.offset.to(device)


__all__ = ["EWC", "QuadraticPenalty"]
