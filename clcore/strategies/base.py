"""The regulariser contract every strategy follows.

The training loop (`clcore.train`) calls, for each task::

    strategy.before_task(model, task)
    for each step:
        loss = task_loss(model(x), y)            # one forward
        loss.backward()                          # one backward, task loss only
        strategy.add_penalty_grad(model)         # adds d(penalty)/d(theta) to p.grad in place
        optimizer.step()
        strategy.after_step(model)
    (after each epoch: strategy.penalty(model), for the logged value)
    strategy.after_task(model, task)

Penalties are quadratic, so their gradient is written analytically into ``p.grad`` after the
task-loss backward: strategies that need the task-loss gradient alone (RWalk's path integral)
read it there, with no second forward or backward pass. The step never computes the penalty's
value (that would be more passes over memory per step); `penalty(model)` returns it as a
differentiable tensor, which the loop logs once per epoch and tests compare with autograd.

A strategy declares its hyperparameters once, as ``params`` (see `clcore.params`), and has a
``name``; that is all it takes to exist: `clcore.strategies.catalogue` finds it, configs and sweep
files accept its parameters, and `Strategy.__init__` checks them and sets them as attributes
(``lambda`` as ``lambda_``).

State lives in plain tensors; `state_dict()` / `load_state_dict()` work like ``torch.optim``'s,
so a checkpoint after task k restores the strategy exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from clcore.params import Params

if TYPE_CHECKING:  # pragma: no cover
    from clcore.data import Task


class Strategy:
    """Fine-tuning: no regulariser. Subclasses set ``name`` and ``params`` and override the hooks they need."""

    #: The strategy's name in configs (``strategy.name``); a class without one is not a strategy.
    name: ClassVar[str]
    #: Its hyperparameters (read by `clcore.strategies.catalogue` from the source, so: literals only).
    params: ClassVar[Params] = Params()
    #: Train on the union of all tasks seen so far (the `joint` upper bound) instead of the current task.
    trains_on_all_seen_tasks = False

    classes: ClassVar[dict[str, type["Strategy"]]] = {}  # name -> class, filled as modules are imported

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Strategy.classes[cls.name] = cls

    def __init__(self, **values):
        """Check ``values`` against ``params`` (`clcore.params.ConfigError` naming the parameter) and
        set each parameter as an attribute, defaults for the missing ones."""
        values = {("lambda" if key == "lambda_" else key): value for key, value in values.items()}
        for name, value in self.params.resolve(values, self.name).items():
            setattr(self, self.params[name].attribute, value)

    def before_task(self, model: nn.Module, task: "Task") -> None:
        """Called before training on ``task``."""

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The regulariser's value as a differentiable scalar (0 when there is none)."""
        return torch.zeros((), device=next(model.parameters()).device)

    def add_penalty_grad(self, model: nn.Module) -> None:
        """Add d(penalty)/d(theta) to each ``p.grad`` in place.

        Called after ``backward()`` of the task loss and before ``optimizer.step()``.
        """

    def after_step(self, model: nn.Module) -> None:
        """Called after every ``optimizer.step()``."""

    def after_task(self, model: nn.Module, task: "Task") -> None:
        """Called after training on ``task`` (importance estimation happens here)."""

    def importance_norm(self) -> float | None:
        """L2 norm of the current importance weights, for logging (None when there are none)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class Naive(Strategy):
    """Plain fine-tuning on each task in turn (the lower bound)."""

    name = "naive"


class Joint(Strategy):
    """Trains on all data seen so far at every task (the usual upper bound; not a CL method)."""

    name = "joint"
    trains_on_all_seen_tasks = True
