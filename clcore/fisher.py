"""Importance estimators: the diagonal of the Fisher information, a label source by a grouping.

With ``l(theta; x, y) = -log p(y | x; theta)`` (cross-entropy) and ``g(x, c) = d l(theta; x, c) / d theta``,
over the first ``N`` training samples of a task (``max_samples`` caps ``N``; the split is already
shuffled), an estimator is two orthogonal choices (`ESTIMATOR_PARTS`).

The **label source** says which label ``c_n`` each sample's gradient is taken at:

``true``       its own label ``y_n`` (the "empirical" Fisher)
``predicted``  the model's argmax label (van de Ven & Tolias 2019's code, Hsu et al. 2018, FACIL)
``sampled``    one label drawn from ``p(. | x_n)`` (one draw for all samples, from ``generator``)
``all``        every label ``c``, weighted by ``p(c | x_n)``: the expectation over the model's predictive
               distribution, the true Fisher (Kirkpatrick et al. 2017). Labels with zero probability
               (class-incremental units masked to -inf) contribute exactly zero.

The **grouping** says whose gradient is squared:

``sample``       each sample's:  F = 1/N sum_n g(x_n, c_n)^2
``batch``        each batch's mean gradient, the ``B`` batches of ``batch_size`` consecutive samples (the
                 last one may be smaller):  F = 1/B sum_b (1/|b| sum_{n in b} g(x_n, c_n))^2
                 It shrinks roughly like 1/batch_size; Avalanche's EWCPlugin (true labels), Hsu et al.
                 and FACIL (predicted labels) compute it, so it is offered to port their lambda values.
``class_batch``  ``batch`` over the same samples ordered by class (stable: each class's samples in their
                 split order): the order Avalanche's EWCPlugin reads a task in, since its benchmarks
                 store an experience grouped by class and the plugin's loader does not shuffle. Batches
                 of one class have mean gradients that do not cancel across classes, so it is much
                 larger than ``batch`` over shuffled samples (`benchmarks/fisher_order.py` measures the
                 factor).

``all`` with a batch grouping is the expectation of ``sampled`` with it over independent draws: the
expected gradient of one sample is zero (``sum_c p(c|x) d log p(c|x) = d sum_c p(c|x) = 0``), so the
cross terms vanish and F = 1/B sum_b 1/|b|^2 sum_{n in b} sum_c p(c | x_n) g(x_n, c)^2. With batches of
one, every grouping gives the per-sample estimator.

Names (`ESTIMATORS`, the ``fisher`` field of EWC) keep the common combinations short: the per-sample ones
are named by their labels (``empirical``, ``predicted``, ``sampled``, ``exact`` for ``all``); a batch
grouping is ``batched`` or ``batched_by_class``, followed by ``_predicted``, ``_sampled`` or ``_exact``
unless the labels are true. So Avalanche's estimator is ``batched_by_class``, FACIL's and Hsu et al.'s
``batched_predicted``, van de Ven's 2019 ``predicted``.

A batch grouping with one label per sample takes one ordinary backward per batch. The per-sample grouping
does not depend on ``batch_size`` (it only bounds memory); it, and ``all`` labels under a batch grouping,
need sums of squared per-sample gradients, and no Python loop over samples gives them. Two exact ways:

- layers whose per-sample gradients follow from their input ``a`` and the loss gradient ``delta`` at
  their output (one batched forward, one backward to the layer outputs; samples do not interact in
  eval mode, so a batched backward gives every sample's own ``delta``), each called once per forward:
  ``nn.Linear``: a sample's weight gradient is ``delta a^T``, so ``sum_n g_n^2 = (delta^2)^T (a^2)``,
  one matmul, and no per-sample gradient is ever written to memory (the identity BackPACK uses; they
  would be ~1 MB per sample for a 270k-parameter MLP). ``nn.Conv2d`` (zero padding, one group): a
  sample's weight gradient is ``delta U^T`` with ``U`` its unfolded input; the sum over positions
  sits inside the square, so it is written, by one batched matmul per chunk of samples (what Opacus
  does), and squared. ``nn.BatchNorm2d`` on running statistics: ``sum_hw delta x_hat`` per channel.
- every other parameter (a Linear used twice, other layer types): per-sample gradients from
  ``torch.func`` (``vmap`` over ``grad``), squared and summed, in chunks of up to ``batch_size``
  samples.

On CPU both cap the per-sample gradients written at once at `CPU_CHUNK_BYTES`.
``factor_layers=False`` sends every parameter through ``vmap`` (same result; tests and benchmarks
compare the two). ``all`` labels take one backward per label ``c``, each sample's loss weighted by
``sqrt(p(c | x))`` (over ``|b|`` under a batch grouping) so that its squared gradient carries
``p(c | x)`` (over ``|b|^2``); labels that no sample can take (units masked to -inf) are skipped, so
nothing multiplies 0 by inf.

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

LABEL_SOURCES = ("all", "true", "sampled", "predicted")
GROUPINGS = ("sample", "batch", "class_batch")
_PER_SAMPLE_NAMES = {"all": "exact", "true": "empirical", "sampled": "sampled", "predicted": "predicted"}
_GROUPING_PREFIXES = {"batch": "batched", "class_batch": "batched_by_class"}


def _estimator_name(labels: str, grouping: str) -> str:
    """The name of a (label source, grouping) pair: see the module docstring."""
    if grouping == "sample":
        return _PER_SAMPLE_NAMES[labels]
    prefix = _GROUPING_PREFIXES[grouping]
    return prefix if labels == "true" else f"{prefix}_{_PER_SAMPLE_NAMES[labels]}"


# every estimator's name -> (label source, grouping); ESTIMATORS is what EWC's ``fisher`` accepts
ESTIMATOR_PARTS = {_estimator_name(labels, grouping): (labels, grouping)
                   for grouping in GROUPINGS for labels in LABEL_SOURCES}
ESTIMATORS = tuple(ESTIMATOR_PARTS)
BATCH_MEAN = tuple(name for name, (_, grouping) in ESTIMATOR_PARTS.items() if grouping != "sample")
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
                    generator: torch.Generator | None = None, factor_layers: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of ``model`` on the first ``max_samples`` samples of ``split``, by parameter name.

    ``batch_size`` is the batch whose mean gradient is squared (`BATCH_MEAN`) or, for the per-sample
    estimators, the most samples per vectorised call; it does not change their result. ``generator``
    drives the labels drawn by the ``sampled`` label source (default: torch's global generator).
    ``factor_layers``: see the module docstring.
    """
    check_estimator_args(estimator, max_samples, batch_size)
    labels_from, grouping = ESTIMATOR_PARTS[estimator]
    n = len(split) if max_samples is None else min(len(split), max_samples)
    if n == 0:
        raise ValueError("cannot estimate importance on an empty split")
    params = {name: p.detach() for name, p in trainable_parameters(model).items()}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    x, t, y = split.x[:n], split.task_ids[:n], split.y[:n]
    if grouping == "class_batch":
        order = torch.sort(y, stable=True).indices
        x, t, y = x[order], t[order], y[order]
    batches = range(0, n, batch_size)

    def logits_of(p, xb, tb):  # a batch through the model with parameters p (buffers as they are)
        return functional_call(model, p, (xb, tb))

    with eval_mode(model), torch.enable_grad():
        if labels_from in ("sampled", "predicted"):
            y = _model_labels(logits_of, params, x, t, batch_size, labels_from == "sampled", generator)
        if grouping != "sample" and labels_from != "all":  # one ordinary backward per batch; p.grad untouched
            for s in batches:
                b = slice(s, s + batch_size)
                loss = F.cross_entropy(model(x[b], t[b]), y[b])
                for k, g in zip(fisher, torch.autograd.grad(loss, list(trainable_parameters(model).values()),
                                                            allow_unused=True, materialize_grads=True)):
                    fisher[k] += g.square()
            torch._foreach_div_(list(fisher.values()), float(len(batches)))
            return fisher

        layers = _factorable_layers(model, params, x[:1], t[:1]) if factor_layers else {}
        in_layers = {f"{name}.{k}" for name, m in layers.items() for k, _ in m.named_parameters(recurse=False)}
        vmapped = {k: p for k, p in params.items() if k not in in_layers}
        fixed = {k: p for k, p in params.items() if k in in_layers}
        chunk_bytes = CPU_CHUNK_BYTES if x.device.type == "cpu" else None

        def sample_loss(p, xs, ts, ys, weight):  # weight * l(theta; x, y) for one sample
            return weight * F.cross_entropy(logits_of({**fixed, **p}, xs[None], ts[None]), ys[None])

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, 0))
        vmap_chunk = batch_size
        if chunk_bytes is not None and vmapped:
            per_sample_bytes = sum(p.numel() * p.element_size() for p in vmapped.values())
            vmap_chunk = max(1, min(batch_size, chunk_bytes // per_sample_bytes))
        for s in batches:
            xb, tb, yb = x[s:s + batch_size], t[s:s + batch_size], y[s:s + batch_size]
            # a batch grouping of all labels squares each sample's gradient over |b|: weights 1/|b|
            scale = 1.0 if grouping == "sample" else 1.0 / len(xb)
            targets = [(yb, torch.full((len(xb),), scale, device=xb.device))]
            if labels_from == "all":  # every label c, each sample weighted by sqrt(p(c|x)); skip impossible labels
                with torch.no_grad():
                    probs = F.softmax(logits_of(params, xb, tb), dim=-1)
                targets = [(torch.full_like(yb, c), probs[:, c].sqrt() * scale) for c in range(probs.shape[1])
                           if bool(probs[:, c].any())]
            if layers:
                _add_layer_squares(model, layers, xb, tb, targets, fisher, chunk_bytes)
            if vmapped:
                for c in range(0, len(xb), vmap_chunk):
                    part = slice(c, c + vmap_chunk)
                    for labels, weight in targets:
                        grads = per_sample(vmapped, xb[part], tb[part], labels[part], weight[part])
                        for k, g in grads.items():
                            fisher[k] += g.square_().sum(0)
    torch._foreach_div_(list(fisher.values()), float(n if grouping == "sample" else len(batches)))
    return fisher


def _factorable_layers(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                       t: torch.Tensor) -> dict[str, nn.Module]:
    """The layers whose squared per-sample gradients come from their input and output gradient alone.

    ``nn.Linear`` on 2-D inputs, ``nn.Conv2d`` (zero padding, one group) on 4-D inputs and
    ``nn.BatchNorm2d`` normalising with its running statistics (in eval mode it does whenever it has
    them), each with every parameter trainable (so the estimate covers each of them). A probe forward
    on one sample records each candidate's calls: a layer qualifies when it runs exactly once and
    nothing changes its output in place. None does in a model with a batch-norm layer that has no
    running statistics (samples interact even in eval mode).
    """
    def qualifies(m: nn.Module) -> bool:
        if type(m) is nn.Linear:
            return True
        if type(m) is nn.Conv2d:
            return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
        if type(m) is nn.BatchNorm2d:  # one without running statistics makes this return {} below
            return m.affine
        return False

    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in model.modules()):
        return {}  # it normalises by the batch even in eval mode: a batched backward mixes samples
    dims = {nn.Linear: 2, nn.Conv2d: 4, nn.BatchNorm2d: 4}
    candidates = {name: m for name, m in model.named_modules() if qualifies(m) and all(
        f"{name}.{k}" in params for k, p in m.named_parameters(recurse=False))}
    calls: dict[str, list[int]] = {name: [] for name in candidates}
    outputs: dict[str, tuple[torch.Tensor, int]] = {}

    def record(name):
        def hook(module, args, output):
            calls[name].append(args[0].dim())
            outputs[name] = (output, output._version)
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in candidates.items()]
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for h in hooks:
            h.remove()
    # an output changed in place (an inplace ReLU) no longer holds the gradient's path to the layer
    return {name: m for name, m in candidates.items()
            if calls[name] == [dims[type(m)]] and outputs[name][0]._version == outputs[name][1]}


def _add_layer_squares(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor, t: torch.Tensor,
                       targets: list[tuple[torch.Tensor, torch.Tensor]], fisher: dict[str, torch.Tensor],
                       chunk_bytes: int | None) -> None:
    """Add each factorable layer's squared per-sample gradients, summed over samples, to ``fisher``.

    ``targets`` are (labels, per-sample loss weight) pairs; one forward serves them all, each takes one
    backward to the layer outputs (``delta``: the gradient of the weighted loss summed over samples,
    which in eval mode is each sample's own gradient). See `_add_squares` for each kind of layer.
    """
    inputs, outputs = {}, {}

    def keep(name):
        def hook(module, args, output):
            a = args[0].detach()
            inputs[name] = a.square() if type(module) is nn.Linear else a  # all a Linear needs, for every target
            outputs[name] = output
        return hook

    hooks = [m.register_forward_hook(keep(name)) for name, m in layers.items()]
    try:
        logits = model(x, t)
    finally:
        for h in hooks:
            h.remove()
    names = list(layers)
    for i, (labels, weight) in enumerate(targets):
        loss = (weight * F.cross_entropy(logits, labels, reduction="none")).sum()
        deltas = torch.autograd.grad(loss, [outputs[k] for k in names], retain_graph=i < len(targets) - 1,
                                     allow_unused=True, materialize_grads=True)
        for name, delta in zip(names, deltas):
            _add_squares(layers[name], inputs[name], delta, fisher[f"{name}.weight"], fisher.get(f"{name}.bias"),
                         chunk_bytes)


def _add_squares(module: nn.Module, a: torch.Tensor, delta: torch.Tensor, weight_sum: torch.Tensor,
                 bias_sum: torch.Tensor | None, chunk_bytes: int | None) -> None:
    """Add one layer's squared per-sample gradients, summed over samples, to ``weight_sum`` and ``bias_sum``.

    ``a``: the layer's input (squared already for a Linear), ``delta``: the gradient at its output.

    - Linear: a sample's weight gradient is ``delta a^T``, so the sum of squares is
      ``(delta^2)^T (a^2)``, one matmul; no per-sample gradient is written.
    - Conv2d: a sample's weight gradient is ``delta U^T`` with ``U`` its unfolded input (``F.unfold``,
      channels x kernel by positions); the sum over positions sits inside the square, so per-sample
      gradients are formed by one batched matmul, a chunk of samples at a time (at most
      ``chunk_bytes`` of unfolded inputs and gradients), squared and summed.
    - BatchNorm2d on running statistics: ``y = gamma x_hat + beta`` per channel, so a sample's weight
      gradient is ``sum_hw delta x_hat = (sum_hw delta a - mean sum_hw delta) / std``.
    Biases (all three): a sample's bias gradient is ``delta`` summed over positions.
    """
    per_sample_bias = delta if delta.dim() == 2 else delta.sum((2, 3))
    if type(module) is nn.Linear:
        weight_sum.addmm_(delta.square().T, a)
    elif type(module) is nn.Conv2d:
        n, positions = len(a), delta[0, 0].numel()
        per_sample = (module.weight[0].numel() * positions + module.weight.numel()) * a.element_size()
        chunk = n if chunk_bytes is None else max(1, min(n, chunk_bytes // per_sample))
        for s in range(0, n, chunk):
            unfolded = _unfold(a[s:s + chunk], module, delta.shape[2:])
            weight_sum.view(len(weight_sum), -1).add_(
                torch.bmm(delta[s:s + chunk].flatten(2), unfolded.transpose(1, 2)).square_().sum(0))
    else:
        delta_a = torch.einsum("ncp,ncp->nc", delta.flatten(2), a.flatten(2))  # no (n, c, h, w) temporary
        gamma = (delta_a - module.running_mean * per_sample_bias) * (module.running_var + module.eps).rsqrt()
        weight_sum += gamma.square_().sum(0)
    if bias_sum is not None:
        bias_sum += per_sample_bias.square().sum(0)


def _unfold(a: torch.Tensor, conv: nn.Conv2d, out_size: torch.Size) -> torch.Tensor:
    """``F.unfold(a, ...)`` for ``conv``: (samples, channels x kernel, output positions).

    A strided view of the zero-padded input copied once: three to five times faster than
    ``F.unfold`` (``im2col``) on CPU for the first layers of a ResNet.
    """
    (ph, pw), (kh, kw), (dh, dw), (sh, sw) = conv.padding, conv.kernel_size, conv.dilation, conv.stride
    padded = F.pad(a, (pw, pw, ph, ph))
    n, c = padded.shape[:2]
    s_n, s_c, s_h, s_w = padded.stride()
    windows = padded.as_strided((n, c, kh, kw, *out_size), (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw))
    return windows.reshape(n, c * kh * kw, -1)


@torch.no_grad()
def _model_labels(logits_of, params, x, t, batch_size, draw: bool, generator) -> torch.Tensor:
    """One label per sample from the model: drawn from its predictive distribution with ``generator``
    (one draw for all samples) when ``draw``, else its argmax."""
    logits = torch.cat([logits_of(params, x[s:s + batch_size], t[s:s + batch_size])
                        for s in range(0, len(x), batch_size)])
    if not draw:
        return logits.argmax(-1)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)


__all__ = ["ESTIMATORS", "ESTIMATOR_PARTS", "LABEL_SOURCES", "GROUPINGS", "BATCH_MEAN", "estimate_fisher",
           "trainable_parameters", "gradients", "eval_mode"]
