"""What EWC, RWalk, SI and MAS share: a quadratic penalty around an anchor, and their state's plumbing.

Each penalises ``factor * lambda * sum_i W_i (theta_i - a_i)^2`` with per-parameter weights ``W`` (its
importance) and anchor ``a``, both set at the end of a task; ``factor`` is 1/2 (EWC, MAS) or 1 (RWalk,
SI), as each paper and its peers write it. `QuadraticRegulariser` holds the parameter binding (a
model's trainable parameters, in the order the state was made in, moved with the state between
devices), the penalty's value and gradient, the importance norm, and ``state_dict``; a subclass
names its tensor state and counters, says which list is ``W``, and does its own importance.
"""

from __future__ import annotations

import weakref
from typing import ClassVar

import torch
from torch import nn

from clcore.fisher import gradients, ordered_parameters
from clcore.strategies.base import Strategy


class QuadraticPenalty:
    """The gradient of ``1/2 sum_i W_i (theta_i - a_i)^2`` added to ``grads``: ``grads += W (theta - a)``.

    Two passes over memory, ``e = theta - a`` then ``grads += W e`` (on CPU a step's overhead is its
    passes over parameter-sized memory). On CUDA ``e`` is one foreach kernel into fresh memory, which
    the caching allocator hands back every step; on CPU a fresh buffer costs page faults every step,
    so ``e`` is written into a kept one, a tensor at a time (there is no foreach with ``out=``).
    ``theta - a`` is formed first: ``grads += W theta - W a`` would cost the same, but where
    ``W theta`` is large (a large lambda) it rounds the task gradient away.
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


class QuadraticRegulariser(Strategy):
    """Base of the strategies whose penalty is ``penalty_factor * lambda * sum W (theta - anchor)^2``.

    Subclasses set ``tensor_state`` (names of their per-parameter tensor lists, aligned with
    ``param_names``; ``anchor`` among them), ``counters`` (integers kept in the state), ``weights_of``
    (the name of the list that is ``W``) and ``penalty_factor``; `allocate` makes the tensor state for a
    model's parameters when there is none.
    """

    tensor_state: ClassVar[tuple[str, ...]] = ("anchor",)
    counters: ClassVar[tuple[str, ...]] = ()
    weights_of: ClassVar[str] = "importance"
    penalty_factor: ClassVar[float] = 1.0

    def __init__(self, **params):
        super().__init__(**params)
        self.param_names: list[str] = []
        for name in self.tensor_state:
            setattr(self, name, [])
        for name in self.counters:
            setattr(self, name, 0)
        self._quadratic: QuadraticPenalty | None = None
        self._bound: tuple[weakref.ref, list[nn.Parameter]] | None = None

    @property
    def penalty_weights(self) -> list[torch.Tensor]:
        """``W``; empty until a task has been consolidated."""
        return getattr(self, self.weights_of)

    def before_task(self, model: nn.Module, task) -> None:
        self._bound = None  # bind afresh: the model may be another one, or on another device
        self._params(model)

    # ------------------------------------------------------------------ penalty
    def penalty(self, model: nn.Module) -> torch.Tensor:
        if not self.penalty_weights:
            return super().penalty(model)
        params = self._params(model)
        total = sum((w * (p - a).square()).sum() for p, w, a in zip(params, self.penalty_weights, self.anchor))
        return self.penalty_factor * self.lambda_ * total

    def add_quadratic_grad(self, params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
        """``grads += 2 factor lambda W (theta - anchor)``, once a task has been consolidated."""
        if self._quadratic is not None:
            self._quadratic.add_grad(params, grads)

    def add_penalty_grad(self, model: nn.Module) -> None:
        params = self._params(model)
        self.add_quadratic_grad(params, gradients(params))

    def consolidated(self) -> None:
        """Call after ``W`` and ``anchor`` changed: the penalty's gradient uses them from the next step."""
        self._quadratic = QuadraticPenalty(torch._foreach_mul(self.penalty_weights,
                                                              2.0 * self.penalty_factor * self.lambda_), self.anchor)

    def importance_norm(self) -> float | None:
        if not self.penalty_weights:
            return None
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.penalty_weights))))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {"param_names": list(self.param_names)}
        state.update({k: dict(zip(self.param_names, getattr(self, k))) for k in self.tensor_state})
        state.update({k: getattr(self, k) for k in self.counters})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.param_names = list(state["param_names"])
        for k in self.tensor_state:
            setattr(self, k, [state[k][name].clone() for name in self.param_names] if state[k] else [])
        for k in self.counters:
            setattr(self, k, int(state[k]))
        self._quadratic = None
        if self.penalty_weights:
            self.consolidated()
        self._bound = None
        self.unbound()

    # ------------------------------------------------------------------ binding
    def allocate(self, params: list[nn.Parameter]) -> None:
        """Make the tensor state for ``params`` (called while there is none). Default: nothing."""

    def bound(self, params: list[nn.Parameter]) -> None:
        """Called whenever the strategy binds to a model (per-step scratch goes here). Default: nothing."""

    def unbound(self) -> None:
        """Called when loaded state drops the binding. Default: nothing."""

    def moved(self, device: torch.device) -> None:
        """Called after the tensor state moved to ``device`` (other tensors to move go here)."""

    def _params(self, model: nn.Module) -> list[nn.Parameter]:
        """Trainable parameters of ``model`` in `param_names` order (cached per model); allocates the state
        on first use and moves it to the parameters' device."""
        if self._bound is not None and self._bound[0]() is model:
            return self._bound[1]
        self.param_names, params = ordered_parameters(model, self.param_names, type(self).__name__)
        with torch.no_grad():
            present = [k for k in self.tensor_state if getattr(self, k)]
            if not present:
                self.allocate(params)
            elif getattr(self, present[0])[0].device != params[0].device:
                for k in present:
                    setattr(self, k, [v.to(params[0].device) for v in getattr(self, k)])
                self.moved(params[0].device)
                if self.penalty_weights:
                    self.consolidated()
            self.bound(params)
        self._bound = (weakref.ref(model), params)
        return params


__all__ = ["QuadraticPenalty", "QuadraticRegulariser"]
