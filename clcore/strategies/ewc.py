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

From Avalanche's ``EWCPlugin(ewc_lambda)``: its penalty is ``ewc_lambda * sum F (theta - theta*)^2``
(no 1/2) with the ``batched`` importance over minibatches of ``train_mb_size``. With
``fisher="batched"``, ``fisher_batch_size = train_mb_size`` and ``fisher_samples=None`` the
importances are identical and::

    lambda (here) = 2 * ewc_lambda (Avalanche)

FACIL's EWC penalty carries the 1/2 (``lamb * sum F (theta - theta*)^2 / 2``), so its ``lamb`` is our
lambda as it stands; its Fisher is also batch-mean gradients squared, but over full batches only, with
the model's argmax labels by default, and it always mixes ``F = alpha F_old + (1 - alpha) F_new``
(alpha on the old importance, anchored at the latest parameters).

Per step the gradient ``lambda * A * (theta - m)`` is added to ``p.grad`` in place in two passes over
memory (`QuadraticPenalty`); the value is only computed when asked for (`penalty`), which the training
loop does once per epoch.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from clcore.data import Task
from clcore.fisher import estimate_fisher, gradients, ordered_parameters
from clcore.params import Param, Params
from clcore.strategies.base import Strategy


class QuadraticPenalty:
    """The gradient of ``1/2 sum_i W_i (theta_i - a_i)^2`` added to ``grads``: ``grads += W (theta - a)``.

    Two passes over memory, ``e = theta - a`` then ``grads += W e`` (on CPU a step's overhead is its
    passes over parameter-sized memory). On CUDA ``e`` is one foreach kernel into fresh memory, which
    the caching allocator hands back every step; on CPU a fresh buffer costs page faults every step,
    so ``e`` is written into a kept one, a tensor at a time (there is no foreach with ``out=``).
    ``theta - a`` is formed first: ``grads += W theta - W a`` would cost the same, but where
    ``W theta`` is large (a large lambda) it rounds the task gradient away. EWC and RWalk share it.
    """

    def __init__(self, weight: list[torch.Tensor], anchor: list[torch.Tensor]):
        self.weight = weight
        self.anchor = anchor
        self.scratch = None if anchor[0].is_cuda else [torch.empty_like(a) for a in anchor]

    @torch.no_grad()
    def add_grad(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        if self.scratch is None:
            difference = torch._foreach_sub(params, self.anchor)
        else:
            difference = self.scratch
            for p, a, e in zip(params, self.anchor, difference):
                torch.sub(p, a, out=e)
        torch._foreach_addcmul_(grads, self.weight, difference)


class EWC(Strategy):
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
        Param("fisher", str, "empirical", "importance estimator (see clcore.fisher)",
              choices=("exact", "empirical", "sampled", "batched"), mutable=True),
        Param("fisher_samples", int, None, "training samples of a task the Fisher is estimated on", low=1,
              nullable="all samples", mutable=True),
        Param("fisher_batch_size", int, 256, "samples per pass of the estimator (the batched estimator's batch)",
              low=1, mutable=True),
        Param("keep_importance_data", bool, False, "keep every task's own F_t and theta*_t for inspection"),
    )

    def __init__(self, **params):
        super().__init__(**params)

        # Statistics (what `state_dict` holds), aligned with `param_names`.
        self.param_names: list[str] = []
        self.importance: list[torch.Tensor] = []  # A (separate) or F~ (online)
        self.anchor: list[torch.Tensor] = []      # m (separate) or theta*_{k-1} (online)
        self.offset: torch.Tensor | None = None   # c (separate; 0 online)
        self.tasks_seen = 0
        self.importance_history: list[dict] = []  # [{"task", "importance": {name: F_t}, "anchor": {name: theta*_t}}]

        self._quadratic: QuadraticPenalty | None = None
        self._bound: tuple[weakref.ref, list[nn.Parameter]] | None = None

    # ------------------------------------------------------------------ hooks
    def before_task(self, model: nn.Module, task: Task) -> None:
        self._bound = None
        self._params(model)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        if not self.importance:
            return super().penalty(model)
        params = self._params(model)
        total = sum((a * (p - m).square()).sum() for p, a, m in zip(params, self.importance, self.anchor))
        return 0.5 * self.lambda_ * (total + self.offset)

    def add_penalty_grad(self, model: nn.Module) -> None:
        if self.importance:
            params = self._params(model)
            self._quadratic.add_grad(params, gradients(params))  # grad += lambda A (theta - m)

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
        self._quadratic = self._make_quadratic()

    def importance_norm(self) -> float | None:
        if not self.importance:
            return None
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.importance))))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "param_names": list(self.param_names),
            "tasks_seen": self.tasks_seen,
            "importance": dict(zip(self.param_names, self.importance)),
            "anchor": dict(zip(self.param_names, self.anchor)),
            "offset": self.offset,
            "importance_history": self.importance_history,
        }

    def load_state_dict(self, state: dict) -> None:
        names = list(state["param_names"])
        self.param_names = names
        self.tasks_seen = int(state["tasks_seen"])
        self.importance = [state["importance"][k].clone() for k in names] if state["importance"] else []
        self.anchor = [state["anchor"][k].clone() for k in names] if state["anchor"] else []
        self.offset = None if state["offset"] is None else state["offset"].clone()
        self.importance_history = list(state["importance_history"])
        self._quadratic = self._make_quadratic() if self.importance else None
        self._bound = None

    # ------------------------------------------------------------------ helpers
    def _make_quadratic(self) -> QuadraticPenalty:
        return QuadraticPenalty(torch._foreach_mul(self.importance, self.lambda_), self.anchor)

    def _params(self, model: nn.Module) -> list[nn.Parameter]:
        """Trainable parameters of ``model`` in `param_names` order (cached per model)."""
        if self._bound is not None and self._bound[0]() is model:
            return self._bound[1]
        self.param_names, params = ordered_parameters(model, self.param_names, "EWC")
        device = params[0].device
        if self.importance and self.importance[0].device != device:
            self.importance = [v.to(device) for v in self.importance]
            self.anchor = [v.to(device) for v in self.anchor]
            self.offset = self.offset.to(device)
            self._quadratic = self._make_quadratic()
        self._bound = (weakref.ref(model), params)
        return params


__all__ = ["EWC", "QuadraticPenalty"]
