"""RWalk: the score by hand, one forward and one backward per step in train mode, short tasks, state."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import clcore.train
from clcore.config import ConfigError, ExperimentConfig
from clcore.data import Split, Task
from clcore.strategies import build_strategy
from clcore.strategies.rwalk import RWalk
from clcore.train import run

from conftest import assert_penalty_grad_is_autograd, small_config

EPS = torch.finfo(torch.float32).eps


class Toy(nn.Module):
    """Two scalar weights; the test writes their gradients by hand and steps SGD with lr 0.5."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))


def toy_task(task_id: int) -> Task:
    empty = Split(torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    return Task(task_id, (), empty, empty, empty)


def toy_step(rwalk: RWalk, toy: Toy, task_grad, lr: float = 0.5):
    """One training step as `clcore.train` does it, with the task-loss gradient given.

    Returns the penalty's value before the step and the gradient the optimiser saw."""
    with torch.no_grad():
        value = float(rwalk.penalty(toy))
    toy.w.grad = torch.tensor(task_grad)
    rwalk.add_penalty_grad(toy)
    total_grad = toy.w.grad.clone()
    with torch.no_grad():
        toy.w -= lr * toy.w.grad
    rwalk.after_step(toy)
    return value, total_grad


def test_score_fisher_and_penalty_match_a_hand_computation():
    toy, rwalk = Toy([1.0, 2.0]), RWalk(lambda_=0.5, alpha=0.5, delta_t=2)
    # ---- task 0: three steps, so one full interval (steps 1-2) and one left over (step 3)
    rwalk.before_task(toy, toy_task(0))
    for g in ([2.0, 0.0], [1.0, 0.0], [-1.0, 1.0]):
        value, total = toy_step(rwalk, toy, g)
        assert value == 0.0 and torch.equal(total, torch.tensor(g))  # no penalty during the first task
    # w[0]: F = 4 (first step: g^2), 0.5*1 + 0.5*4 = 2.5, 0.5*1 + 0.5*2.5 = 1.75; theta 1 -> 0 -> -0.5 -> 0
    #   interval 1: path = -2*(0-1) - 1*(-0.5-0) = 2.5,  s = 2.5 / (0.5 * 2.5 * (-1.5)^2) = 8/9
    #   interval 2: path = -(-1)*(0-(-0.5)) = 0.5,       s = 0.5 / (0.5 * 1.75 * 0.5^2)  = 16/7
    # w[1]: g = 0, 0, 1: F = 0, 0, 0.5; theta 2 -> 2 -> 2 -> 1.5
    #   interval 1: path = 0, s = 0 / (0 + eps) = 0;     interval 2: s = 0.5 / (0.5 * 0.5 * 0.25) = 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 3 steps >= delta_t: no warning
        rwalk.after_task(toy, toy_task(0))
    torch.testing.assert_close(rwalk.fisher[0], torch.tensor([1.75, 0.5]))
    torch.testing.assert_close(rwalk.score[0], torch.tensor([8 / 9 + 16 / 7, 8.0]))
    # w = F / max F + relu(s) / max relu(s) = [1 + (200/63)/8, 0.5/1.75 + 1]
    torch.testing.assert_close(rwalk.weights[0], torch.tensor([1 + 25 / 63, 2 / 7 + 1]))
    torch.testing.assert_close(rwalk.anchor[0], torch.tensor([0.0, 1.5]))

    # ---- task 1: two steps (one interval), penalty on
    rwalk.before_task(toy, toy_task(1))
    value, total = toy_step(rwalk, toy, [1.0, -1.0])  # at the anchor: penalty 0
    assert float(value) == 0.0
    torch.testing.assert_close(total, torch.tensor([1.0, -1.0]))
    # theta = [-0.5, 2.0]; F = [0.5 + 0.875, 0.5 + 0.25]
    value, total = toy_step(rwalk, toy, [0.0, 2.0])
    w = torch.tensor([88 / 63, 9 / 7])
    d = torch.tensor([-0.5, 0.5])
    assert float(value) == pytest.approx(0.5 * float((w * d * d).sum()), rel=1e-6)  # lambda sum w d^2 = 169/504
    torch.testing.assert_close(total, torch.tensor([0.0, 2.0]) + 2 * 0.5 * w * d)  # + 2 lambda w d
    # The Fisher and the path integral use the task gradient only, not the penalty's
    torch.testing.assert_close(rwalk.fisher[0], torch.tensor([0.5 * 0 + 0.5 * 1.375, 0.5 * 4 + 0.5 * 0.75]))
    step2 = -0.5 * total  # theta change of step 2
    path = torch.tensor([-1.0 * -0.5, 1.0 * 0.5]) - torch.tensor([0.0, 2.0]) * step2
    moved = torch.tensor([-0.5, 2.0]) + step2 - torch.tensor([0.0, 1.5])
    s_task1 = path / (0.5 * rwalk.fisher[0] * moved ** 2 + EPS)
    torch.testing.assert_close(rwalk.task_score[0], s_task1)  # interval closed after delta_t = 2 steps
    rwalk.after_task(toy, toy_task(1))
    score = 0.5 * (torch.tensor([8 / 9 + 16 / 7, 8.0]) + s_task1)  # scores of successive tasks averaged
    torch.testing.assert_close(rwalk.score[0], score)
    fisher = rwalk.fisher[0]
    torch.testing.assert_close(rwalk.weights[0], fisher / fisher.max() + score.clamp(min=0) / score.clamp(min=0).max())


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_weights_the_new_squared_gradient(alpha):
    toy, rwalk = Toy([0.0, 0.0]), RWalk(alpha=alpha, delta_t=5)
    rwalk.before_task(toy, toy_task(0))
    for g in ([1.0, 2.0], [3.0, -1.0], [0.5, 0.0]):
        toy_step(rwalk, toy, g)
    want = torch.tensor([0.25, 0.0]) if alpha == 1.0 else torch.tensor([1.0, 4.0])  # last g^2 / first g^2
    torch.testing.assert_close(rwalk.fisher[0], want)


def test_negative_scores_are_clipped_and_zero_maxima_give_zero_not_nan():
    toy, rwalk = Toy([1.0, 1.0]), RWalk(delta_t=1)
    rwalk.before_task(toy, toy_task(0))
    toy_step(rwalk, toy, [0.0, 0.0])  # nothing moves: F = 0, path = 0 -> 0 / eps
    rwalk.after_task(toy, toy_task(0))
    assert torch.equal(rwalk.weights[0], torch.zeros(2))
    toy2, rw2 = Toy([1.0, 1.0]), RWalk(delta_t=1)
    rw2.before_task(toy2, toy_task(0))
    toy2.w.grad = torch.tensor([1.0, 1.0])
    rw2.add_penalty_grad(toy2)
    with torch.no_grad():
        toy2.w += torch.tensor([0.5, 0.5])  # an uphill step: negative score everywhere
    rw2.after_step(toy2)
    rw2.after_task(toy2, toy_task(0))
    assert float(rw2.score[0].max()) < 0
    torch.testing.assert_close(rw2.weights[0], torch.tensor([1.0, 1.0]))  # Fisher term only


def manual_step(rwalk: RWalk, toy: Toy, task_grad, move):
    """A step whose parameter change is ``move`` (not the gradient's): uphill steps give negative paths."""
    toy.w.grad = torch.tensor(task_grad)
    rwalk.add_penalty_grad(toy)
    with torch.no_grad():
        toy.w += torch.tensor(move)
    rwalk.after_step(toy)


@pytest.mark.parametrize("score_clip", ["average", "interval"])
def test_score_clip_interval_clips_each_interval_as_the_authors_code_does(score_clip):
    """Two one-step intervals on w[0]: uphill (path -0.5), then downhill (path 2); w[1] never moves."""
    toy, rwalk = Toy([0.0, 0.0]), RWalk(alpha=0.5, delta_t=1, score_clip=score_clip)
    rwalk.before_task(toy, toy_task(0))
    manual_step(rwalk, toy, [1.0, 0.0], [0.5, 0.0])    # F = 1; path = -1 * 0.5
    manual_step(rwalk, toy, [2.0, 0.0], [-1.0, 0.0])   # F = 0.5 * 4 + 0.5 * 1 = 2.5; path = -2 * -1
    rwalk.after_task(toy, toy_task(0))
    if score_clip == "interval":  # relu(path / (F d^2 + 1e-3)) per interval, no 1/2
        want = max(0.0, -0.5 / (1.0 * 0.25 + 1e-3)) + 2.0 / (2.5 * 1.0 + 1e-3)
        weights = [1.0 + 1.0, 0.0]  # F / max F + s / max s
    else:  # path / (1/2 F d^2 + eps) summed, clipped once when the weights are formed
        want = -0.5 / (0.5 * 0.25 + EPS) + 2.0 / (0.5 * 2.5 + EPS)  # -4 + 1.6 < 0
        weights = [1.0, 0.0]  # the score term is clipped away
    torch.testing.assert_close(rwalk.score[0], torch.tensor([want, 0.0]))
    torch.testing.assert_close(rwalk.weights[0], torch.tensor(weights))


# ------------------------------------------------------------------------------ inside the training loop
def capture(monkeypatch):
    """Wrap `clcore.train`'s model and strategy builders to see what `run` builds."""
    seen = {}
    build_model, build_strategy_ = clcore.train.build_model, clcore.train.build_strategy

    def model_builder(*args, **kwargs):
        seen["model"] = model = build_model(*args, **kwargs)
        return model

    def strategy_builder(config):
        seen["strategy"] = strategy = build_strategy_(config)
        return strategy

    monkeypatch.setattr(clcore.train, "build_model", model_builder)
    monkeypatch.setattr(clcore.train, "build_strategy", strategy_builder)
    return seen


def test_one_forward_and_one_backward_per_step_in_train_mode(monkeypatch):
    seen = capture(monkeypatch)
    config = small_config(strategy={"name": "rwalk", "lambda": 1.0, "delta_t": 3},
                          model={"name": "mlp", "hidden_sizes": [16], "dropout": 0.3},
                          benchmark={"train_samples_per_task": 128}, train={"epochs": 2})
    calls = {"forward": 0, "backward": 0, "modes": set()}

    def on_forward(module, args):
        if torch.is_grad_enabled():  # training forwards (evaluation runs under inference mode)
            calls["forward"] += 1
            calls["modes"].update(m.training for m in module.modules())

    def on_backward(module, grad_input, grad_output):
        calls["backward"] += 1

    original = clcore.train.build_model

    def hooked(*args, **kwargs):
        model = original(*args, **kwargs)
        model.register_forward_pre_hook(on_forward)
        model.head.register_full_backward_hook(on_backward)
        return model

    monkeypatch.setattr(clcore.train, "build_model", hooked)
    result = run(config)
    steps = 5 * 2 * math.ceil(128 / 32)
    assert seen["strategy"].steps == steps
    assert calls["forward"] == steps and calls["backward"] == steps
    assert calls["modes"] == {True}  # dropout on in every training step, never eval mode
    assert result.history[-1]["penalty"] > 0


def test_fewer_steps_than_delta_t_warns_and_gives_finite_penalties(monkeypatch):
    seen = capture(monkeypatch)
    config = small_config(strategy={"name": "rwalk", "lambda": 1.0, "delta_t": 10_000},
                          benchmark={"train_samples_per_task": 64})
    with pytest.warns(RuntimeWarning, match="fewer than delta_t=10000") as record:
        result = run(config)
    assert {Path(w.filename).name for w in record} == {"train.py"}  # points at the loop that called after_task
    rwalk = seen["strategy"]
    assert all(torch.isfinite(w).all() for w in rwalk.weights)
    assert max(float(s.abs().max()) for s in rwalk.score) > 0  # the short task was still scored
    for h in result.history:
        assert math.isfinite(h["penalty"]) and math.isfinite(h["importance_norm"])
    assert result.history[-1]["penalty"] > 0


def test_penalty_gradient_is_the_gradient_of_the_penalty(monkeypatch):
    seen = capture(monkeypatch)
    run(small_config(strategy={"name": "rwalk", "lambda": 3.0}, benchmark={"n_tasks": 2}))
    model, rwalk = seen["model"], seen["strategy"]
    assert_penalty_grad_is_autograd(rwalk, model)


# ------------------------------------------------------------------------------ state
def test_state_dict_round_trip_continues_exactly_with_new_lambda():
    toy = Toy([1.0, 2.0])
    rwalk = RWalk(lambda_=0.5, alpha=0.7, delta_t=2)
    rwalk.before_task(toy, toy_task(0))
    for g in ([2.0, 0.5], [1.0, -0.5], [-1.0, 1.0]):
        toy_step(rwalk, toy, g)
    rwalk.after_task(toy, toy_task(0))
    state = rwalk.state_dict()
    assert not {"lambda", "lambda_", "alpha", "delta_t"} & set(state)  # statistics only
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = RWalk(lambda_=0.5, alpha=0.7, delta_t=2)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    toy_b = Toy([0.0, 0.0])
    with torch.no_grad():
        toy_b.w.copy_(toy.w)
    for r, t in ((rwalk, toy), (resumed, toy_b)):
        r.before_task(t, toy_task(1))
        for g in ([0.3, 1.0], [1.0, 1.0], [-2.0, 0.1]):
            toy_step(r, t, g)
        r.after_task(t, toy_task(1))
    a, b = rwalk.state_dict(), resumed.state_dict()
    for key in a:
        if isinstance(a[key], dict):
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), (key, name)
        else:
            assert a[key] == b[key], key
    stronger = RWalk(lambda_=5.0, alpha=0.7, delta_t=2)
    stronger.load_state_dict(rwalk.state_dict())
    toy.w.grad = torch.zeros(2)
    with torch.no_grad():
        toy.w += 1.0
    assert float(stronger.penalty(toy).detach()) == pytest.approx(10 * float(rwalk.penalty(toy).detach()))


@pytest.mark.parametrize("strategy", [{"name": "rwalk", "lambda": 2.0, "alpha": 0.5, "delta_t": 4},
                                      {"name": "rwalk", "lambda": 2.0, "alpha": 0.5, "delta_t": 4, "fisher_every": 3},
                                      {"name": "ewcpp", "lambda": 2.0, "alpha": 0.5, "fisher_every": 3}],
                         ids=["rwalk", "rwalk_window", "ewcpp_window"])
def test_resume_after_a_task_gives_the_uninterrupted_result(strategy):
    config = small_config(strategy=strategy,
                          benchmark={"train_samples_per_task": 200},
                          model={"name": "mlp", "hidden_sizes": [16], "dropout": 0.2},
                          train={"optimizer": "adam", "lr": 0.01, "reset_optimizer": False})
    checkpoints = {}
    full = run(config, [lambda r: checkpoints.__setitem__(r.task, r.checkpoint())])
    resumed = run(config, resume_from=checkpoints[2])
    assert resumed.test_matrix == full.test_matrix
    assert resumed.history == full.history
    assert full.history[-1]["penalty"] > 0


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("strategy, field", [
    ({"lambda": 0.0}, "strategy.lambda"),
    ({"lambda": -0.1}, "strategy.lambda"),
    ({"alpha": -0.1}, "strategy.alpha"),
    ({"alpha": 1.5}, "strategy.alpha"),
    ({"delta_t": 0}, "strategy.delta_t"),
    ({"delta_t": 2.5}, "strategy.delta_t"),
    ({"fisher": "exact"}, "strategy.fisher"),  # an EWC parameter
    ({"score_clip": "per_step"}, "strategy.score_clip"),
])
def test_bad_rwalk_config_is_rejected_naming_the_field(strategy, field):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"strategy": {"name": "rwalk", **strategy}})
    assert err.value.field == field


@pytest.mark.parametrize("kwargs, name", [({"lambda_": 0.0}, "lambda"), ({"alpha": 1.01}, "alpha"),
                                          ({"delta_t": 0}, "delta_t"), ({"score_clip": "relu"}, "score_clip")])
def test_bad_rwalk_arguments_are_rejected_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        RWalk(**kwargs)


def test_config_builds_the_strategy_it_names():
    config = ExperimentConfig.from_dict({"strategy": {"name": "rwalk", "lambda": 0.1, "alpha": 0.9, "delta_t": 10}})
    rwalk = build_strategy(config.strategy)
    assert (rwalk.lambda_, rwalk.alpha, rwalk.delta_t, rwalk.score_clip) == (0.1, 0.9, 10, "average")
    authors = build_strategy(config.with_overrides({"strategy.score_clip": "interval"}).strategy)
    assert authors.score_clip == "interval"


def test_the_declared_score_clips_are_the_ones_rwalk_implements():
    """The declaration is literal (the catalogue reads it without torch); it must name what exists."""
    assert RWalk.params["score_clip"].choices == tuple(RWalk.SCORE_CLIPS)
