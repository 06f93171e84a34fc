"""EWC: separate and online penalties against their explicit formulas, Avalanche's scale, state, bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from clcore.config import BenchmarkConfig, ConfigError, ExperimentConfig, ModelConfig
from clcore.data import build_benchmark
from clcore.models import build_model
from clcore.strategies import build_strategy
from clcore.strategies.ewc import EWC
from clcore.strategies.quadratic import QuadraticPenalty
from clcore.train import TrainingDivergedError, run

from conftest import small_config


def setup(synthetic, scenario: str = "task"):
    bench = build_benchmark(BenchmarkConfig(name="synthetic", scenario=scenario, n_tasks=5), synthetic)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_sizes=[16]), input_shape=bench.input_shape, scenario=scenario,
                        n_tasks=5, classes_per_task=2, mean=bench.mean, std=bench.std)
    return model, bench.tasks


def train_steps(model, task, steps: int = 5, strategy=None, lr: float = 0.2, batch: int = 32):
    """A few plain SGD steps (with the strategy's penalty gradient when given), so anchors differ."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for s in range(steps):
        idx = slice(s * batch, (s + 1) * batch)
        loss = F.cross_entropy(model(task.train.x[idx], task.train.task_ids[idx]), task.train.y[idx])
        optimizer.zero_grad()
        loss.backward()
        if strategy is not None:
            strategy.add_penalty_grad(model)
        optimizer.step()


def consolidate(strategy, model, tasks, n_tasks: int):
    for task in tasks[:n_tasks]:
        strategy.before_task(model, task)
        train_steps(model, task, strategy=strategy)
        strategy.after_task(model, task)
    train_steps(model, tasks[n_tasks])  # move away from the last anchor


def penalty_value_and_grad(strategy, model):
    """What the training loop sees: the value `penalty` gives and the gradient add_penalty_grad adds."""
    for p in model.parameters():
        p.grad = None
    strategy.add_penalty_grad(model)
    with torch.no_grad():
        value = strategy.penalty(model)
    return float(value), {k: p.grad.clone() for k, p in model.named_parameters()}


def explicit(model, terms, lambda_):
    """lambda/2 sum_terms sum_i F_i (theta_i - theta*_i)^2 and its gradient, by autograd."""
    params = dict(model.named_parameters())
    total = sum((f[k] * (params[k] - anchor[k]).square()).sum() for f, anchor in terms for k in f)
    value = 0.5 * lambda_ * total
    grads = torch.autograd.grad(value, list(params.values()))
    return float(value.detach()), dict(zip(params, grads))


def assert_grads_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7 * float(b[k].abs().max()) + 1e-12, msg=k)


# ------------------------------------------------------------------------------ separate mode
def test_separate_mode_equals_explicit_sum_over_tasks(synthetic):
    model, tasks = setup(synthetic)
    ewc = EWC(lambda_=37.0, mode="separate", fisher="empirical", fisher_samples=200, keep_importance_data=True)
    consolidate(ewc, model, tasks, 3)
    history = ewc.importance_history
    assert [h["task"] for h in history] == [0, 1, 2]
    terms = [(h["importance"], h["anchor"]) for h in history]
    value, grads = penalty_value_and_grad(ewc, model)
    want_value, want_grads = explicit(model, terms, 37.0)
    assert value > 1e-4
    assert value == pytest.approx(want_value, rel=1e-5)
    assert float(ewc.penalty(model).detach()) == pytest.approx(want_value, rel=1e-5)
    assert_grads_close(grads, want_grads)
    # one quadratic, whatever the number of tasks: one importance and one anchor per parameter
    assert len(ewc.importance) == len(ewc.anchor) == len(list(model.parameters()))
    assert ewc.importance_norm() == pytest.approx(
        math.sqrt(sum(float(sum(h["importance"][k] for h in history).square().sum()) for k in history[0]["importance"])),
        rel=1e-5)


def test_separate_mode_at_an_anchor_leaves_only_the_constant(synthetic):
    """At theta = m the quadratic part vanishes: the value is the carried constant, the gradient zero."""
    model, tasks = setup(synthetic)
    ewc = EWC(lambda_=5.0, fisher="exact", fisher_samples=100, keep_importance_data=True)
    consolidate(ewc, model, tasks, 2)
    with torch.no_grad():
        for p, m in zip(model.parameters(), ewc.anchor):
            p.copy_(m)
    value, grads = penalty_value_and_grad(ewc, model)
    want_value, _ = explicit(model, [(h["importance"], h["anchor"]) for h in ewc.importance_history], 5.0)
    assert value == pytest.approx(want_value, rel=1e-4) and value > 0
    assert max(float(g.abs().max()) for g in grads.values()) < 1e-6 * 5.0


# ------------------------------------------------------------------------------ online mode
def test_online_recursion_over_three_tasks(synthetic):
    model, tasks = setup(synthetic)
    gamma = 0.6
    ewc = EWC(lambda_=11.0, mode="online", decay_factor=gamma, fisher="exact", fisher_samples=150,
              keep_importance_data=True)
    consolidate(ewc, model, tasks, 3)
    f = [h["importance"] for h in ewc.importance_history]
    anchors = [h["anchor"] for h in ewc.importance_history]
    # F~ = gamma^2 F_0 + gamma F_1 + F_2, anchored at theta*_2 only
    running = {k: gamma ** 2 * f[0][k] + gamma * f[1][k] + f[2][k] for k in f[0]}
    for k, imp in zip(ewc.param_names, ewc.importance):
        torch.testing.assert_close(imp, running[k], rtol=1e-6, atol=0)
    for k, anchor in zip(ewc.param_names, ewc.anchor):
        assert torch.equal(anchor, anchors[2][k])
    value, grads = penalty_value_and_grad(ewc, model)
    want_value, want_grads = explicit(model, [(running, anchors[2])], 11.0)
    assert value == pytest.approx(want_value, rel=1e-5) and value > 0
    assert_grads_close(grads, want_grads)


def test_decay_one_is_separate_importance_at_the_latest_anchor(synthetic):
    model, tasks = setup(synthetic)
    ewc = EWC(lambda_=1.0, mode="online", decay_factor=1.0, fisher_samples=100, keep_importance_data=True)
    consolidate(ewc, model, tasks, 2)
    f = [h["importance"] for h in ewc.importance_history]
    for k, imp in zip(ewc.param_names, ewc.importance):
        torch.testing.assert_close(imp, f[0][k] + f[1][k])


# ------------------------------------------------------------------------------ Avalanche's scale
def avalanche_importance(model, split, batch_size):
    """Avalanche EWCPlugin.compute_importances, written out: eval mode, a DataLoader over the
    experience's dataset in order, criterion = mean cross-entropy, grad^2 summed, / len(dataloader)."""
    model.eval()
    importances = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    n_batches = 0
    for s in range(0, len(split), batch_size):
        x, y, t = split.x[s:s + batch_size], split.y[s:s + batch_size], split.task_ids[s:s + batch_size]
        model.zero_grad()
        F.cross_entropy(model(x, t), y).backward()
        for k, p in model.named_parameters():
            if p.grad is not None:
                importances[k] += p.grad.clone().pow(2)
        n_batches += 1
    model.train()
    return {k: v / n_batches for k, v in importances.items()}


def by_class(split):
    """The split as an Avalanche benchmark stores an experience: grouped by class, each class in order."""
    order = torch.sort(split.y, stable=True).indices
    return type(split)(split.x[order], split.y[order], split.task_ids[order])


@pytest.mark.parametrize("mode, decay", [("separate", None), ("online", 0.7)])
def test_lambda_is_twice_avalanche_ewc_lambda_with_the_class_grouped_batched_estimator(synthetic, mode, decay):
    model, tasks = setup(synthetic)
    tasks = [type(t)(t.id, t.classes, type(t.train)(t.train.x[:300], t.train.y[:300], t.train.task_ids[:300]),
                     t.val, t.test) for t in tasks]  # Avalanche reads the whole experience: keep it small
    ewc_lambda, train_mb_size = 3.5, 32
    ewc = EWC(lambda_=2 * ewc_lambda, mode=mode, decay_factor=decay, fisher="batched_by_class",
              fisher_batch_size=train_mb_size)
    saved_params, importances = {}, {}
    for t in range(3):
        ewc.before_task(model, tasks[t])
        train_steps(model, tasks[t], strategy=ewc)
        ewc.after_task(model, tasks[t])
        # Avalanche after_training_exp / update_importances
        imp = avalanche_importance(model, by_class(tasks[t].train), train_mb_size)
        importances[t] = imp if (mode == "separate" or t == 0) else {
            k: decay * importances[t - 1][k] + imp[k] for k in imp}
        saved_params[t] = {k: p.detach().clone() for k, p in model.named_parameters()}
    train_steps(model, tasks[3])

    # Avalanche before_backward: penalty = sum_exp sum_k imp * (p - saved)^2;  loss += ewc_lambda * penalty
    params = dict(model.named_parameters())
    exps = range(3) if mode == "separate" else [2]
    avalanche = ewc_lambda * sum((importances[e][k] * (params[k] - saved_params[e][k]).pow(2)).sum()
                                 for e in exps for k in params)
    want_grads = dict(zip(params, torch.autograd.grad(avalanche, list(params.values()))))
    value, grads = penalty_value_and_grad(ewc, model)
    assert value == pytest.approx(float(avalanche.detach()), rel=1e-5) and value > 0
    assert_grads_close(grads, want_grads)


# ------------------------------------------------------------------------------ model state untouched
def test_importance_pass_restores_mode_and_leaves_batchnorm_buffers(synthetic):
    bench = build_benchmark(BenchmarkConfig(name="synthetic", scenario="task", n_tasks=5), synthetic)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cnn", hidden_sizes=[16], dropout=0.3), input_shape=(1, 8, 8),
                        scenario="task", n_tasks=5, classes_per_task=2, mean=bench.mean, std=bench.std)
    # the small CNN has no BatchNorm; ResNet-18 does (on 3x8x8 inputs)
    resnet = build_model(ModelConfig(name="resnet18"), input_shape=(3, 8, 8), scenario="task", n_tasks=5,
                         classes_per_task=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    task = bench.tasks[0]
    rgb = type(task)(0, task.classes, type(task.train)(task.train.x[:24].expand(-1, 3, -1, -1).contiguous(),
                                                        task.train.y[:24], task.train.task_ids[:24]), None, None)
    resnet.train()
    resnet(rgb.train.x, rgb.train.task_ids)  # non-trivial running statistics
    for net, t in ((model, task), (resnet, rgb)):
        net.train()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        ewc = EWC(fisher="empirical", fisher_samples=24, fisher_batch_size=8)
        ewc.before_task(net, t)
        ewc.after_task(net, t)
        assert net.training and all(m.training for m in net.modules())
        for k, v in net.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert ewc.importance_norm() > 0


# ------------------------------------------------------------------------------ state
def test_state_dict_round_trip_through_disk_with_new_hyperparameters(synthetic):
    model, tasks = setup(synthetic)
    ewc = EWC(lambda_=3.0, mode="online", decay_factor=0.5, fisher_samples=100, keep_importance_data=True)
    consolidate(ewc, model, tasks, 2)
    state = ewc.state_dict()
    assert not {"lambda", "lambda_", "decay_factor", "mode", "fisher"} & set(state)  # statistics only
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    same = EWC(lambda_=3.0, mode="online", decay_factor=0.5, fisher_samples=100, keep_importance_data=True)
    same.load_state_dict(loaded)
    assert penalty_value_and_grad(same, model)[0] == pytest.approx(penalty_value_and_grad(ewc, model)[0], rel=1e-6)
    # population-based training: lambda comes from the constructor, statistics from the checkpoint
    stronger = EWC(lambda_=30.0, mode="online", decay_factor=0.5)
    stronger.load_state_dict(loaded)
    assert penalty_value_and_grad(stronger, model)[0] == pytest.approx(10 * penalty_value_and_grad(ewc, model)[0],
                                                                        rel=1e-6)
    # and the next task continues the recursion from the loaded statistics
    for strategy in (ewc, same):
        strategy.after_task(model, tasks[2])
    for a, b in zip(ewc.importance, same.importance):
        assert torch.equal(a, b)
    assert len(same.importance_history) == 3


@pytest.mark.parametrize("strategy", [
    {"name": "ewc", "lambda": 50.0, "mode": "separate", "fisher": "exact", "fisher_samples": 64},
    {"name": "ewc", "lambda": 50.0, "mode": "online", "decay_factor": 0.8, "fisher": "sampled"},
])
def test_resume_after_a_task_gives_the_uninterrupted_result(strategy):
    config = small_config(strategy=strategy, benchmark={"train_samples_per_task": 256},
                          train={"optimizer": "adam", "lr": 0.01, "reset_optimizer": False})
    checkpoints = {}
    full = run(config, [lambda r: checkpoints.__setitem__(r.task, r.checkpoint())])
    resumed = run(config, resume_from=checkpoints[1])
    assert resumed.test_matrix == full.test_matrix
    assert resumed.history == full.history
    assert full.history[1]["penalty"] > 0 and full.history[4]["importance_norm"] > 0


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_a_huge_lambda_leaves_the_task_gradient_intact_at_the_anchor(synthetic, mode):
    """At theta = theta* the penalty's gradient is exactly 0, however large lambda * F is: the step
    forms theta - theta* first, so W theta and W theta* never swamp the task gradient."""
    model, tasks = setup(synthetic)
    ewc = EWC(lambda_=1e12, mode=mode, decay_factor=0.5 if mode == "online" else None, fisher_samples=100)
    ewc.before_task(model, tasks[0])
    train_steps(model, tasks[0], strategy=ewc)
    ewc.after_task(model, tasks[0])  # the anchor is where the model is now
    assert max(float(a.max()) for a in ewc.importance) * 1e12 > 1e6
    x, t, y = tasks[1].train.x[:32], tasks[1].train.task_ids[:32], tasks[1].train.y[:32]
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x, t), y).backward()
    task_grads = [p.grad.clone() for p in model.parameters()]
    ewc.before_task(model, tasks[1])
    ewc.add_penalty_grad(model)
    for p, g in zip(model.parameters(), task_grads):
        assert torch.equal(p.grad, g)


def test_quadratic_penalty_kept_buffer_and_foreach_paths_agree():
    """CPU writes theta - a into a kept buffer a tensor at a time, CUDA uses one foreach kernel into
    fresh memory: both add exactly W (theta - a), and the kept buffer is reused, never reallocated."""
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (7,), (3, 7)]
    weight, anchor, params, grads = ([torch.rand(s, generator=g) for s in shapes] for _ in range(4))
    want = [gr + w * (p - a) for gr, w, p, a in zip(grads, weight, params, anchor)]
    kept = QuadraticPenalty(weight, anchor)
    assert kept.scratch is not None  # CPU tensors
    buffers = [e.data_ptr() for e in kept.scratch]
    foreach = QuadraticPenalty(weight, anchor)
    foreach.scratch = None  # the CUDA path, run on CPU tensors
    results = []
    for q in (kept, foreach):
        out = [gr.clone() for gr in grads]
        q.add_grad(params, out)
        torch.testing.assert_close(out, want)  # addcmul may fuse the multiply-add: not bit-equal to `want`
        results.append(out)
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert [e.data_ptr() for e in kept.scratch] == buffers


def test_penalty_gradient_fills_parameters_the_task_loss_did_not_reach(synthetic):
    model, tasks = setup(synthetic)
    ewc = EWC(lambda_=2.0, fisher_samples=100)
    consolidate(ewc, model, tasks, 1)
    for p in model.parameters():
        p.grad = None
    ewc.add_penalty_grad(model)
    assert all(p.grad is not None for p in model.parameters())
    assert any(bool(p.grad.any()) for p in model.parameters()) and float(ewc.penalty(model).detach()) > 0


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("strategy, field", [
    ({"lambda": 0}, "strategy.lambda"),
    ({"lambda": -1.0}, "strategy.lambda"),
    ({"lambda": float("nan")}, "strategy.lambda"),
    ({"mode": "online"}, "strategy.decay_factor"),
    ({"mode": "online", "decay_factor": 0.0}, "strategy.decay_factor"),
    ({"mode": "online", "decay_factor": 1.5}, "strategy.decay_factor"),
    ({"mode": "separate", "decay_factor": 0.5}, "strategy.decay_factor"),
    ({"mode": "both"}, "strategy.mode"),
    ({"fisher": "kfac"}, "strategy.fisher"),
    ({"fisher_samples": 0}, "strategy.fisher_samples"),
    ({"fisher_batch_size": 0}, "strategy.fisher_batch_size"),
])
def test_bad_ewc_config_is_rejected_naming_the_field(strategy, field):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"strategy": {"name": "ewc", **strategy}})
    assert err.value.field == field
    assert str(err.value).startswith(field)


@pytest.mark.parametrize("kwargs, name", [
    ({"lambda_": 0.0}, "lambda"), ({"mode": "online"}, "decay_factor"),
    ({"mode": "online", "decay_factor": 2.0}, "decay_factor"), ({"fisher": "kfac"}, "fisher"),
    ({"fisher_samples": 0}, "fisher_samples"), ({"mode": "both"}, "mode"),
])
def test_bad_ewc_arguments_are_rejected_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        EWC(**kwargs)


def test_config_builds_the_strategy_it_names():
    config = ExperimentConfig.from_dict({"strategy": {"name": "ewc", "lambda": 4.0, "mode": "online",
                                                      "decay_factor": 0.9, "fisher": "batched",
                                                      "fisher_samples": 10, "fisher_batch_size": 5,
                                                      "keep_importance_data": True}})
    ewc = build_strategy(config.strategy)
    assert (ewc.lambda_, ewc.mode, ewc.decay_factor, ewc.fisher, ewc.fisher_samples, ewc.fisher_batch_size,
            ewc.keep_importance_data) == (4.0, "online", 0.9, "batched", 10, 5, True)


def test_huge_lr_stops_the_run_naming_task_epoch_and_step():
    config = small_config(strategy={"name": "ewc", "lambda": 1.0}, train={"lr": 1e30})
    with pytest.raises(TrainingDivergedError) as err:
        run(config)
    assert err.value.task == 0 and err.value.epoch == 0
    assert f"task 0, epoch 0, step {err.value.step}" in str(err.value)


def test_huge_lambda_stops_the_run_in_the_second_task():
    config = small_config(strategy={"name": "ewc", "lambda": 1e30, "fisher_samples": 64})
    with pytest.raises(TrainingDivergedError) as err:
        run(config)
    assert (err.value.task, err.value.epoch) == (1, 0)
    assert "task 1, epoch 0" in str(err.value) and "lambda" in str(err.value)


def test_the_declared_fisher_choices_are_the_estimators_fisher_implements():
    """The declaration is literal (the catalogue reads it without torch); it must name what exists."""
    from clcore import fisher

    assert EWC.params["fisher"].choices == fisher.ESTIMATORS
