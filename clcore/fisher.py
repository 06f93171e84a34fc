"""Importance estimators: the diagonal of the Fisher information, four ways.

With ``l(theta; x, y) = -log p(y | x; theta)`` (cross-entropy) and ``g = d l / d theta``, over the
first ``N`` training samples of a task (``max_samples`` caps ``N``; the split is already shuffled):

``exact``      F = 1/N sum_n sum_c p(c | x_n) g(x_n, c)^2
               the expectation over the model's predictive distribution (the true Fisher;
               Kirkpatrick et al. 2017). Labels with zero probability (class-incremental units
               masked to -inf) contribute exactly zero.
``empirical``  F = 1/N sum_n g(x_n, y_n)^2                      true labels, one gradient per sample
``sampled``    F = 1/N sum_n g(x_n, c_n)^2,  c_n ~ p(. | x_n)   one label drawn from the model per sample
``batched``    F = 1/B sum_b (d/d theta [1/|b| sum_{n in b} l(theta; x_n, y_n)])^2
               the square of each batch-mean gradient, averaged over the ``B`` batches of
               ``batch_size`` samples (the last one may be smaller). Avalanche's EWCPlugin computes
               exactly this (FACIL the same over full batches only); it shrinks roughly like
               1/batch_size, so it is offered to port their lambda values.

The three per-sample estimators do not depend on ``batch_size`` (it only bounds memory), and none
runs a Python loop over samples. Two exact ways to the sum of squared per-sample gradients:

- ``nn.Linear`` layers (called once per forward, on ``(batch, in)`` inputs): a sample's weight
  gradient is ``delta a^T`` (``a`` the layer's input, ``delta`` the loss gradient at its output),
  so ``sum_n g_n^2 = (delta^2)^T (a^2)`` and ``sum_n delta_n^2`` for the bias: one batched forward,
  one backward to the layer outputs, one matmul per layer, and no per-sample gradient is ever
  written to memory (the identity BackPACK uses; the per-sample gradients would be ~1 MB per sample
  for a 270k-parameter MLP). Samples do not interact in eval mode, so a batched backward gives every
  sample's own ``delta``.
- every other parameter (convolutions, BatchNorm, a Linear used twice): per-sample gradients from
  ``torch.func`` (``vmap`` over ``grad``), squared and summed, in chunks of up to ``batch_size``
  samples (on CPU also capped at `CPU_CHUNK_BYTES`).

``factor_linear=False`` sends every parameter through ``vmap`` (same result; tests and benchmarks
compare the two). ``exact`` takes one backward per label ``c``, each sample's loss weighted by
``sqrt(p(c | x))`` so that its squared gradient carries ``p(c | x)``; labels that no sample can take
(units masked to -inf) are skipped, so nothing multiplies 0 by inf.

The pass runs with every module in eval mode (dropout off, BatchNorm on its running statistics) and
puts each module back in the mode it found; it changes no parameter and no buffer.
Only parameters with ``requires_grad`` are estimated; heads of other tasks get zero importance.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from clcore.data import Split

ESTIMATORS = ("exact", "empirical", "sampled", "batched")
# On CPU, per-sample gradients are written to memory and read back: chunks of at most this many bytes
# stay in cache and in malloc's reusable heap (no page faults), about twice as fast as chunks of 256
# samples for a 270k-parameter MLP on a 2-core machine.
CPU_CHUNK_BYTES = 32 * 2**20


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that take part in importance and penalties: those with ``requires_grad``."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def check_estimator_args(estimator: str, max_samples: int | None, batch_size: int) -> None:
    """Raise ``ValueError`` naming the field when an importance-estimator argument is out of range."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"fisher: unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"fisher_samples: must be >= 1 or None (all samples), got {max_samples!r}")
    if batch_size < 1:
        raise ValueError(f"fisher_batch_size: must be >= 1, got {batch_size!r}")


def ordered_parameters(model: nn.Module, names: list[str], owner: str) -> tuple[list[str], list[nn.Parameter]]:
    """``model``'s trainable parameters in the order of ``names`` (taken from the model when empty).

    Strategies keep their state in lists aligned with these; a model whose trainable parameters
    differ from the state's is an error naming ``owner``.
    """
    named = trainable_parameters(model)
    if not names:
        names = list(named)
    elif list(named) != names:
        raise ValueError(f"{owner}: the model's trainable parameters {list(named)} differ from those of "
                         f"the strategy's state {names}")
    return names, [named[k] for k in names]


def gradients(params: list[nn.Parameter]) -> list[torch.Tensor]:
    """``p.grad`` of each parameter, zero-filled where the last backward left it ``None``."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in params]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside the block; each module's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def estimate_fisher(model: nn.Module, split: Split, estimator: str = "empirical", *,
                    max_samples: int | None = None, batch_size: int = 256,
                    generator: torch.Generator | None = None, factor_linear: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of ``model`` on the first ``max_samples`` samples of ``split``, by parameter name.

    ``batch_size`` is the batch whose mean gradient is squared (``batched``) or, for the per-sample
    estimators, the most samples per vectorised call; it does not change their result. ``generator``
    drives the labels drawn by ``sampled`` (default: torch's global generator). ``factor_linear``:
    see the module docstring.
    """
    check_estimator_args(estimator, max_samples, batch_size)
    n = len(split) if max_samples is None else min(len(split), max_samples)
    if n == 0:
        raise ValueError("cannot estimate importance on an empty split")
    params = {name: p.detach() for name, p in trainable_parameters(model).items()}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    x, t, y = split.x[:n], split.task_ids[:n], split.y[:n]

    def logits_of(p, xb, tb):  # a batch through the model with parameters p (buffers as they are)
        return functional_call(model, p, (xb, tb))

    with eval_mode(model), torch.enable_grad():
        if estimator == "batched":  # one ordinary backward per batch; nothing is written to p.grad
            batches = range(0, n, batch_size)
            for s in batches:
                b = slice(s, s + batch_size)
                loss = F.cross_entropy(model(x[b], t[b]), y[b])
                for k, g in zip(fisher, torch.autograd.grad(loss, list(trainable_parameters(model).values()),
                                                            allow_unused=True, materialize_grads=True)):
                    fisher[k] += g.square()
            torch._foreach_div_(list(fisher.values()), float(len(batches)))
            return fisher

        linears = _factorable_linears(model, params, x[:1], t[:1]) if factor_linear else {}
        in_linears = {f"{name}.{k}" for name in linears for k in ("weight", "bias")}
        vmapped = {k: p for k, p in params.items() if k not in in_linears}
        fixed = {k: p for k, p in params.items() if k in in_linears}

        def sample_loss(p, xs, ts, ys, weight):  # weight * l(theta; x, y) for one sample
            return weight * F.cross_entropy(logits_of({**fixed, **p}, xs[None], ts[None]), ys[None])

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, 0))
        vmap_chunk = batch_size
        if x.device.type == "cpu" and vmapped:
            per_sample_bytes = sum(p.numel() * p.element_size() for p in vmapped.values())
            vmap_chunk = max(1, min(batch_size, CPU_CHUNK_BYTES // per_sample_bytes))
        if estimator == "sampled":
            y = _sample_labels(logits_of, params, x, t, batch_size, generator)
        for s in range(0, n, batch_size):
            xb, tb, yb = x[s:s + batch_size], t[s:s + batch_size], y[s:s + batch_size]
            targets = [(yb, torch.ones(len(xb), device=xb.device))]
            if estimator == "exact":  # every label c, each sample weighted by sqrt(p(c|x)); skip impossible labels
                with torch.no_grad():
                    probs = F.softmax(logits_of(params, xb, tb), dim=-1)
                targets = [(torch.full_like(yb, c), probs[:, c].sqrt()) for c in range(probs.shape[1])
                           if bool(probs[:, c].any())]
            if linears:
                _add_linear_squares(model, linears, xb, tb, targets, fisher)
            if vmapped:
                for c in range(0, len(xb), vmap_chunk):
                    part = slice(c, c + vmap_chunk)
                    for labels, weight in targets:
                        grads = per_sample(vmapped, xb[part], tb[part], labels[part], weight[part])
                        for k, g in grads.items():
                            fisher[k] += g.square_().sum(0)
    torch._foreach_div_(list(fisher.values()), float(n))
    return fisher


def _factorable_linears(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                        t: torch.Tensor) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules whose trainable weight's squared per-sample gradients factor.

    A probe forward on one sample records each Linear's calls: a layer qualifies when it runs exactly
    once, on a 2-D input, and its parameters are all trainable (so the estimate covers each of them).
    """
    candidates = {name: m for name, m in model.named_modules() if type(m) is nn.Linear
                  and f"{name}.weight" in params and (m.bias is None or f"{name}.bias" in params)}
    calls: dict[str, list[int]] = {name: [] for name in candidates}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: calls[name].append(args[0].dim()))
             for name, m in candidates.items()]
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return {name: m for name, m in candidates.items() if calls[name] == [2]}


def _add_linear_squares(model: nn.Module, linears: dict[str, nn.Linear], x: torch.Tensor, t: torch.Tensor,
                        targets: list[tuple[torch.Tensor, torch.Tensor]], fisher: dict[str, torch.Tensor]) -> None:
    """``fisher[W] += (delta^2)^T (a^2)`` and ``fisher[b] += sum_n delta_n^2`` for each Linear and target.

    ``targets`` are (labels, per-sample loss weight) pairs; one forward serves them all, each takes one
    backward to the Linear outputs (``delta``: the gradient of the weighted loss summed over samples,
    which in eval mode is each sample's own gradient).
    """
    inputs, outputs = {}, {}

    def keep(name):
        def hook(module, args, output):
            inputs[name], outputs[name] = args[0].detach().square(), output
        return hook

    hooks = [m.register_forward_hook(keep(name)) for name, m in linears.items()]
    try:
        logits = model(x, t)
    finally:
        for h in hooks:
            h.remove()
    names = list(linears)
    for i, (labels, weight) in enumerate(targets):
        loss = (weight * F.cross_entropy(logits, labels, reduction="none")).sum()
        deltas = torch.autograd.grad(loss, [outputs[k] for k in names], retain_graph=i < len(targets) - 1,
                                     allow_unused=True, materialize_grads=True)
        for name, delta in zip(names, deltas):
            delta_sq = delta.square()
            fisher[f"{name}.weight"].addmm_(delta_sq.T, inputs[name])
            if linears[name].bias is not None:
                fisher[f"{name}.bias"] += delta_sq.sum(0)


@torch.no_grad()
def _sample_labels(logits_of, params, x, t, batch_size, generator) -> torch.Tensor:
    """One label per sample drawn from the model's predictive distribution (one draw for all samples)."""
    probs = torch.cat([F.softmax(logits_of(params, x[s:s + batch_size], t[s:s + batch_size]), dim=-1)
                       for s in range(0, len(x), batch_size)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


__all__ = ["ESTIMATORS", "estimate_fisher", "trainable_parameters", "gradients", "eval_mode"]
