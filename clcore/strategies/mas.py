"""Memory Aware Synapses (Aljundi et al. 2018, "Memory Aware Synapses: Learning what (not) to forget").

After task ``k``, on its first ``N`` training samples (``importance_samples`` caps ``N``; no labels
are used), with ``f(x)`` the model's output for ``x`` (the logits of the sample's head)::

    Omega_k = 1/N sum_n | d ||f(x_n)||_2^2 / d theta |        per sample, then averaged (eq. 2-4)
    Omega  <- alpha * Omega + (1 - alpha) * Omega_k           Omega = 0 before the first task
    theta* <- theta_end(k)

and while training the tasks after it::

    P(theta) = lambda/2 * sum_i Omega_i (theta_i - theta*_i)^2,      dP/dtheta = lambda Omega (theta - theta*)

Conventions and how peers differ:

- The accumulation over tasks and the penalty's 1/2 are Avalanche's ``MASPlugin(lambda_reg, alpha)``
  (``alpha`` weighs the old importance; after the first task ``Omega = (1 - alpha) Omega_1``), so
  ``lambda`` and ``alpha`` carry the same meaning. Its importance does not port as it stands: Avalanche
  takes the absolute value of the *batch-mean* gradient of the (unsquared) norm ``||f(x)||_2``, which
  shrinks with the batch size, multiplies each batch by ``len(batch)`` (the length of the
  ``(x, y, t)`` tuple, 3, not the number of samples) and computes it in train mode (dropout on).
  Here the absolute value is taken per sample, as the paper defines it, so the importance does not
  depend on ``importance_batch_size`` (it only bounds memory).
- The importance pass runs in eval mode (dropout off, BatchNorm on its running statistics: the
  function the model computes at test time) and puts every module back in its mode.
- Output units masked to ``-inf`` (class-IL units of unseen tasks) are left out of the norm: they
  are not part of the learned function yet.
- Per step: one forward, one backward, and the penalty gradient in two passes over parameter memory
  (`QuadraticPenalty`, as EWC); the importance pass costs one vectorised per-sample gradient per sample
  after each task.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from clcore.data import Split, Task
from clcore.fisher import CPU_CHUNK_BYTES, eval_mode, trainable_parameters
from clcore.params import Param, Params
from clcore.strategies.quadratic import QuadraticRegulariser


def output_sensitivity(model: nn.Module, split: Split, max_samples: int | None = None,
                       batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``1/N sum_n |d ||f(x_n)||^2 / d theta|`` over the first ``max_samples`` samples, by parameter name
    (eval mode; the model's modes, parameters and buffers are left as they were)."""
    n = len(split) if max_samples is None else min(len(split), max_samples)
    if n == 0:
        raise ValueError("cannot estimate importance on an empty split")
    params = {name: p.detach() for name, p in trainable_parameters(model).items()}
    importance = {name: torch.zeros_like(p) for name, p in params.items()}

    def squared_norm(p, x, t):  # ||f(x)||_2^2 of one sample, masked units left out
        out = functional_call(model, p, (x[None], t[None]))
        return torch.where(torch.isfinite(out), out, 0.0).square().sum()

    per_sample = vmap(grad(squared_norm), in_dims=(None, 0, 0))
    chunk = batch_size
    if split.x.device.type == "cpu":  # per-sample gradients are written out: keep a chunk in cache
        per_sample_bytes = sum(p.numel() * p.element_size() for p in params.values())
        chunk = max(1, min(batch_size, CPU_CHUNK_BYTES // per_sample_bytes))
    with eval_mode(model), torch.enable_grad():
        for s in range(0, n, chunk):
            part = slice(s, min(s + chunk, n))
            for name, g in per_sample(params, split.x[part], split.task_ids[part]).items():
                importance[name] += g.abs_().sum(0)
    torch._foreach_div_(list(importance.values()), float(n))
    return importance


class MAS(QuadraticRegulariser):
    """Memory Aware Synapses: importance from the sensitivity of the output's squared norm."""

    name = "mas"
    params = Params(
        Param("lambda", float, 1.0, "penalty weight (the penalty carries a 1/2, as Avalanche's)", low=0,
              low_open=True, mutable=True),
        Param("alpha", float, 0.5, "weight of the old importance when a task's is added (Avalanche's alpha)",
              low=0, high=1, mutable=True),
        Param("importance_samples", int, None, "training samples of a task the importance is estimated on",
              low=1, nullable="all samples", mutable=True),
        Param("importance_batch_size", int, 256, "most samples per vectorised gradient call (memory only)",
              low=1, mutable=True),
    )

    tensor_state = ("importance", "anchor")  # Omega; theta*, the parameters at the end of the last task
    counters = ("tasks_seen",)
    penalty_factor = 0.5

    @torch.no_grad()
    def after_task(self, model: nn.Module, task: Task) -> None:
        estimate = output_sensitivity(model, task.train, self.importance_samples, self.importance_batch_size)
        params = self._params(model)
        new = [estimate[name] for name in self.param_names]
        old = self.importance or [torch.zeros_like(v) for v in new]
        self.importance = torch._foreach_add(torch._foreach_mul(old, self.alpha), new, alpha=1.0 - self.alpha)
        self.anchor = [p.detach().clone() for p in params]
        self.tasks_seen += 1
        self.consolidated()


__all__ = ["MAS", "output_sensitivity"]
