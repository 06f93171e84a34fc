"""Importance estimators against brute-force loops; eval mode, BatchNorm and batch-size independence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clcore.config import BenchmarkConfig, ModelConfig
from clcore.data import Split, build_benchmark
from clcore.fisher import ESTIMATOR_PARTS, ESTIMATORS, GROUPINGS, LABEL_SOURCES, _factorable_layers, estimate_fisher
from clcore.models import ContinualModel, OutputHead, build_model

N = 60  # samples per estimate: enough to exercise chunking, small enough for a per-sample loop


def tiny(synthetic, scenario: str = "task", hidden=(16,), dropout: float = 0.0, seen: int = 2):
    """A small MLP with the scenario's head, trained for no step, and the task-1 training split."""
    bench = build_benchmark(BenchmarkConfig(name="synthetic", scenario=scenario, n_tasks=5), synthetic)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_sizes=list(hidden), dropout=dropout), input_shape=bench.input_shape,
                        scenario=scenario, n_tasks=5, classes_per_task=2, mean=bench.mean, std=bench.std)
    model.head.set_seen_tasks(seen)
    return model, bench.tasks[1].train


def brute_force(model: nn.Module, split: Split, estimator: str, n: int, batch_size: int = 8,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The definitions in `clcore.fisher`, one autograd backward per sample or batch (and label), eval mode."""
    labels_from, grouping = ESTIMATOR_PARTS[estimator]
    was_training = model.training
    model.eval()
    params = dict(model.named_parameters())
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    x, y, t = split.x[:n], split.y[:n], split.task_ids[:n]
    if grouping == "class_batch":  # the same samples, ordered by class (stable)
        order = torch.sort(y, stable=True).indices
        x, y, t = x[order], y[order], t[order]
    logits = [model(x[i:i + 1], t[i:i + 1]) for i in range(n)]
    probs = torch.cat([l.softmax(-1) for l in logits]).detach()
    if labels_from == "sampled":  # the same single draw for all samples as the estimator makes
        y = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    elif labels_from == "predicted":
        y = probs.argmax(-1)

    def squared_grad(loss, weight):
        model.zero_grad()
        loss.backward(retain_graph=True)
        for k, p in params.items():
            if p.grad is not None:
                fisher[k] += weight * p.grad.square()

    groups = [range(i, i + 1) for i in range(n)] if grouping == "sample" else \
        [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    for group in groups:
        if labels_from != "all":  # the square of the group's mean gradient
            squared_grad(sum(F.cross_entropy(logits[i], y[i:i + 1]) for i in group) / len(group), 1.0)
            continue
        for i in group:  # every label the model gives a non-zero probability, over |b|^2 in a batch
            for c in range(probs.shape[1]):
                if probs[i, c] > 0:
                    squared_grad(F.cross_entropy(logits[i], torch.tensor([c])), float(probs[i, c]) / len(group) ** 2)
    model.train(was_training)
    return {k: v / len(groups) for k, v in fisher.items()}


def total(fisher: dict) -> float:
    return sum(float(v.sum()) for v in fisher.values())


def assert_close(a: dict, b: dict, rtol: float = 1e-4):
    assert a.keys() == b.keys()
    for k in a:
        scale = float(b[k].abs().max())
        assert scale > 0 or float(a[k].abs().max()) == 0, k
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * scale, msg=k)


# --------------------------------------------------------------------------- each estimator vs a loop
@pytest.mark.parametrize("scenario", ["task", "class"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimator_equals_brute_force_loop(synthetic, scenario, estimator):
    model, split = tiny(synthetic, scenario)
    fast = estimate_fisher(model, split, estimator, max_samples=N, batch_size=8,
                           generator=torch.Generator().manual_seed(3))
    slow = brute_force(model, split, estimator, N, batch_size=8, generator=torch.Generator().manual_seed(3))
    assert_close(fast, slow)
    assert all(torch.isfinite(v).all() for v in fast.values())
    assert sum(float(v.sum()) for v in fast.values()) > 1e-4  # a real, non-trivial estimate


def test_sampled_labels_come_from_the_model_and_average_to_exact(synthetic):
    model, split = tiny(synthetic, "task")
    exact = estimate_fisher(model, split, "exact", max_samples=200)
    draws = [estimate_fisher(model, split, "sampled", max_samples=200, generator=torch.Generator().manual_seed(s))
             for s in range(30)]
    mean = {k: torch.stack([d[k] for d in draws]).mean(0) for k in exact}
    total_exact = sum(float(v.sum()) for v in exact.values())
    total_mean = sum(float(v.sum()) for v in mean.values())
    assert total_mean == pytest.approx(total_exact, rel=0.05)
    assert not all(torch.equal(draws[0][k], draws[1][k]) for k in exact)  # the draw is random


def test_class_incremental_unseen_units_get_zero_importance_and_no_nan(synthetic):
    model, split = tiny(synthetic, "class", seen=2)  # units 4..9 are masked to -inf
    for estimator in ESTIMATORS:
        fisher = estimate_fisher(model, split, estimator, max_samples=N, batch_size=16)
        assert all(torch.isfinite(v).all() for v in fisher.values()), estimator
        assert float(fisher["head.linear.weight"][4:].abs().max()) == 0.0, estimator
        assert float(fisher["head.linear.weight"][:4].abs().max()) > 0.0, estimator


def test_heads_of_other_tasks_and_frozen_parameters(synthetic):
    model, split = tiny(synthetic, "task")  # split of task 1: head units 2..3 of the multi head
    model.backbone.net[1].bias.requires_grad_(False)
    fisher = estimate_fisher(model, split, "empirical", max_samples=N)
    assert "backbone.net.1.bias" not in fisher
    heads = [fisher[f"head.heads.{t}.weight"] for t in range(5)]
    assert float(heads[1].abs().max()) > 0
    assert all(float(heads[t].abs().max()) == 0 for t in (0, 2, 3, 4))


# --------------------------------------------------------------------------- scale and sample cap
@pytest.mark.parametrize("estimator", ["exact", "empirical", "sampled"])
def test_per_sample_estimators_do_not_depend_on_batch_size(synthetic, estimator):
    model, split = tiny(synthetic, "task")
    runs = [estimate_fisher(model, split, estimator, max_samples=N, batch_size=b,
                            generator=torch.Generator().manual_seed(0)) for b in (1, 7, 64)]
    assert_close(runs[1], runs[0], rtol=1e-5)
    assert_close(runs[2], runs[0], rtol=1e-5)


NAMES = {parts: name for name, parts in ESTIMATOR_PARTS.items()}


@pytest.mark.parametrize("labels", LABEL_SOURCES)
def test_batches_of_one_give_the_per_sample_estimator_and_larger_batches_shrink_it(synthetic, labels):
    """The square of a batch-mean gradient: the reason its lambda values do not port to the others."""
    model, split = tiny(synthetic, "task")
    batched = NAMES[labels, "batch"]
    runs = {b: estimate_fisher(model, split, batched, max_samples=256, batch_size=b,
                               generator=torch.Generator().manual_seed(0)) for b in (1, 16, 128)}
    per_sample = estimate_fisher(model, split, NAMES[labels, "sample"], max_samples=256, batch_size=1,
                                 generator=torch.Generator().manual_seed(0))
    assert_close(runs[1], per_sample, rtol=1e-5)
    assert total(runs[128]) < total(runs[16]) < 0.5 * total(runs[1])
    if labels == "all":  # no cross terms in expectation: exactly the per-sample Fisher over |b|
        assert total(runs[16]) == pytest.approx(total(per_sample) / 16, rel=1e-5)
        assert total(runs[128]) == pytest.approx(total(per_sample) / 128, rel=1e-5)


def test_batched_exact_is_the_expectation_of_batched_sampled(synthetic):
    model, split = tiny(synthetic, "task")
    expected = total(estimate_fisher(model, split, "batched_exact", max_samples=200, batch_size=10))
    draws = [total(estimate_fisher(model, split, "batched_sampled", max_samples=200, batch_size=10,
                                   generator=torch.Generator().manual_seed(s))) for s in range(60)]
    assert sum(draws) / len(draws) == pytest.approx(expected, rel=0.05)
    assert len(set(draws)) == len(draws)  # the draw is random


def test_predicted_labels_are_the_models_argmax_not_the_true_labels(synthetic):
    """An untrained model predicts other labels than the true ones: the two Fishers differ, and the
    predicted one equals the empirical Fisher of a split relabelled with the model's argmax."""
    model, split = tiny(synthetic, "task")
    with torch.no_grad():
        argmax = model(split.x[:N], split.task_ids[:N]).argmax(-1)
    assert 0 < int((argmax != split.y[:N]).sum()) < N
    relabelled = Split(split.x[:N], argmax, split.task_ids[:N])
    for grouping in ("sample", "batch"):  # (class_batch orders by the true labels, so not relabelled ones)
        assert_close(estimate_fisher(model, split, NAMES["predicted", grouping], max_samples=N, batch_size=8),
                     estimate_fisher(model, relabelled, NAMES["true", grouping], batch_size=8), rtol=1e-6)
    for grouping in GROUPINGS:
        predicted, true = (total(estimate_fisher(model, split, NAMES[labels, grouping], max_samples=N, batch_size=8))
                           for labels in ("predicted", "true"))
        assert abs(predicted - true) > 1e-3 * true, grouping


def test_fisher_samples_caps_to_the_first_samples(synthetic):
    model, split = tiny(synthetic, "task")
    capped = estimate_fisher(model, split, "empirical", max_samples=50, batch_size=16)
    first = Split(split.x[:50], split.y[:50], split.task_ids[:50])
    assert_close(capped, estimate_fisher(model, first, "empirical", batch_size=16), rtol=1e-6)
    assert_close(estimate_fisher(model, first, "empirical", max_samples=10_000), capped, rtol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (dict(estimator="kfac"), "fisher: unknown estimator 'kfac'"),
    (dict(max_samples=0), "fisher_samples"),
    (dict(batch_size=0), "fisher_batch_size"),
])
def test_bad_arguments_are_rejected(synthetic, bad, message):
    model, split = tiny(synthetic)
    with pytest.raises(ValueError, match=message):
        estimate_fisher(model, split, **{"estimator": "empirical", **bad})


# --------------------------------------------------------------------------- eval mode, BatchNorm
class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = 4

    def forward(self, x):
        return self.net(x)


def bn_model_and_split():
    torch.manual_seed(0)
    model = ContinualModel(ConvBN(), OutputHead(4, "multi", 2, 3), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    split = Split(x, torch.randint(0, 3, (40,), generator=g), torch.randint(0, 2, (40,), generator=g))
    model.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        model(split.x, split.task_ids)
    return model, split


@pytest.mark.parametrize("estimator", ["exact", "empirical", "sampled", "predicted", "batched", "batched_by_class",
                                       "batched_exact"])
@pytest.mark.parametrize("start_in_train_mode", [True, False])
def test_importance_pass_runs_in_eval_mode_and_changes_nothing(estimator, start_in_train_mode):
    model, split = bn_model_and_split()
    model.train(start_in_train_mode)
    model.backbone.net[3].train(True)  # a module in a mode of its own must get it back
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen_modes = []
    hook = model.backbone.net[1].register_forward_pre_hook(lambda m, args: seen_modes.append(m.training))

    fisher = estimate_fisher(model, split, estimator, batch_size=16, generator=torch.Generator().manual_seed(0))
    hook.remove()

    assert seen_modes and not any(seen_modes)  # BatchNorm ran on its running statistics
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    for k, v in before.items():  # parameters, running_mean/var and num_batches_tracked
        assert torch.equal(after[k], v), k
    # dropout is off: the same estimate again; and it matches the loop with BatchNorm in eval mode
    again = estimate_fisher(model, split, estimator, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert_close(again, fisher, rtol=1e-6)
    slow = brute_force(model, split, estimator, len(split), batch_size=16, generator=torch.Generator().manual_seed(0))
    assert_close(fisher, slow)


# --------------------------------------------------------------------------- layers without per-sample gradients
class SharedLinear(nn.Module):
    """One Linear applied twice: its squared per-sample gradients do not factor."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 12)
        self.out_features = 12

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x.flatten(1)[:, :12])))


def shared_linear_model_and_split():
    torch.manual_seed(0)
    model = ContinualModel(SharedLinear(), OutputHead(12, "multi", 2, 3), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    _, split = bn_model_and_split()
    return model, split


class Convolutions(nn.Module):
    """Convolutions of every shape the unfolding must get right, and some that must not be factored.

    ``batch_stats`` adds a BatchNorm without running statistics: samples then interact even in eval
    mode, so no layer may be factored.
    """

    def __init__(self, batch_stats: bool = False):
        super().__init__()
        self.strided = nn.Conv2d(3, 4, 3, stride=2, padding=(1, 2), dilation=(1, 2))  # bias
        self.bn = nn.BatchNorm2d(4)
        self.rect = nn.Conv2d(4, 6, (2, 3), bias=False)  # no padding, rectangular kernel
        self.grouped = nn.Conv2d(6, 6, 1, groups=2)       # vmap
        self.inplace = nn.Conv2d(6, 5, 1)                 # its output is changed in place: vmap
        self.reflect = nn.Conv2d(5, 5, 3, padding=1, padding_mode="reflect")  # vmap
        self.norm = nn.BatchNorm2d(6, track_running_stats=False) if batch_stats else nn.Identity()
        self.out_features = 5

    def forward(self, x):
        x = torch.relu(self.bn(self.strided(x)))
        x = self.grouped(self.norm(self.rect(x)))
        return self.reflect(torch.relu_(self.inplace(x))).mean((2, 3))


def convolutions_model_and_split(batch_stats: bool = False):
    torch.manual_seed(0)
    model = ContinualModel(Convolutions(batch_stats), OutputHead(5, "multi", 2, 3), (0.5, 0.5, 0.5),
                           (0.25, 0.25, 0.25))
    _, split = bn_model_and_split()
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(split.x, split.task_ids)
    return model, split


MODELS = {"conv_bn": bn_model_and_split, "shared_linear": shared_linear_model_and_split,
          "convolutions": convolutions_model_and_split}


@pytest.mark.parametrize("estimator", ["exact", "empirical", "sampled"])
@pytest.mark.parametrize("kind", ["mlp_task", "mlp_class", "conv_bn", "shared_linear", "convolutions", "cnn"])
def test_factored_layers_equal_vmap_over_every_parameter(synthetic, kind, estimator):
    if kind.startswith("mlp"):
        model, split = tiny(synthetic, kind.split("_")[1], hidden=(16, 8))
    elif kind == "cnn":  # the library's SmallCNN, at the size of the synthetic images
        bench = build_benchmark(BenchmarkConfig(name="synthetic", scenario="task", n_tasks=5), synthetic)
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="cnn", hidden_sizes=[16]), input_shape=bench.input_shape, scenario="task",
                            n_tasks=5, classes_per_task=2, mean=bench.mean, std=bench.std)
        split = bench.tasks[1].train
    else:
        model, split = MODELS[kind]()
    factored, vmapped = (estimate_fisher(model, split, estimator, max_samples=N, batch_size=16, factor_layers=f,
                                         generator=torch.Generator().manual_seed(1)) for f in (True, False))
    assert_close(factored, vmapped, rtol=1e-5)
    assert sum(float(v.sum()) for v in factored.values()) > 1e-4


def test_factored_convolutions_equal_the_loop_in_chunks(monkeypatch):
    """Convolutions and BatchNorm against one backward per sample, with chunks of one sample or several."""
    model, split = convolutions_model_and_split()
    slow = brute_force(model, split, "empirical", len(split))
    for chunk_bytes in (1, 3000, 2**30):
        monkeypatch.setattr("clcore.fisher.CPU_CHUNK_BYTES", chunk_bytes)
        assert_close(estimate_fisher(model, split, "empirical", batch_size=16), slow)


def test_only_layers_called_once_and_left_unchanged_are_factored(synthetic):
    mlp, split = tiny(synthetic, "task", hidden=(16, 8))
    probe = (split.x[:1], split.task_ids[:1])
    params = {k: p.detach() for k, p in mlp.named_parameters()}
    heads = {f"head.heads.{t}" for t in range(5)}
    assert set(_factorable_layers(mlp, params, *probe)) == {"backbone.net.1", "backbone.net.3", *heads}
    mlp.head.heads[1].bias.requires_grad_(False)  # a partly frozen layer goes through vmap for the rest
    params = {k: p.detach() for k, p in mlp.named_parameters() if p.requires_grad}
    assert set(_factorable_layers(mlp, params, *probe)) == {"backbone.net.1", "backbone.net.3", *heads} - {
        "head.heads.1"}

    shared, shared_split = shared_linear_model_and_split()
    params = {k: p.detach() for k, p in shared.named_parameters()}
    assert set(_factorable_layers(shared, params, shared_split.x[:1], shared_split.task_ids[:1])) == {
        "head.heads.0", "head.heads.1"}
    assert_close(estimate_fisher(shared, shared_split, "empirical"),
                 brute_force(shared, shared_split, "empirical", len(shared_split)))

    convs, convs_split = convolutions_model_and_split()
    convs.eval()
    params = {k: p.detach() for k, p in convs.named_parameters()}
    assert set(_factorable_layers(convs, params, convs_split.x[:1], convs_split.task_ids[:1])) == {
        "backbone.strided", "backbone.bn", "backbone.rect", "head.heads.0", "head.heads.1"}

    mixing, mixing_split = convolutions_model_and_split(batch_stats=True)
    params = {k: p.detach() for k, p in mixing.named_parameters()}
    assert _factorable_layers(mixing, params, mixing_split.x[:1], mixing_split.task_ids[:1]) == {}
    assert_close(estimate_fisher(mixing, mixing_split, "empirical"),
                 brute_force(mixing, mixing_split, "empirical", len(mixing_split)))
