"""Synaptic Intelligence: the path integral and Omega by hand and against a plain reference loop,
the penalty's gradient, state, bad input, and SI inside `clcore.run`."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from clcore.config import ConfigError, ExperimentConfig
from clcore.strategies import build_strategy
from clcore.strategies.si import SI
from clcore.train import run, train_step

from conftest import assert_penalty_grad_is_autograd, small_config
from test_rwalk import Toy, capture, toy_step, toy_task


def test_omega_importance_and_penalty_match_a_hand_computation():
    toy, si = Toy([1.0, 2.0]), SI(lambda_=0.5, xi=0.25)
    si.before_task(toy, toy_task(0))
    for g in ([2.0, 0.0], [1.0, 0.0], [-1.0, 1.0]):  # SGD lr 0.5
        value, total = toy_step(si, toy, g)
        assert value == 0.0 and torch.equal(total, torch.tensor(g))  # no penalty during the first task
    # w[0]: 1 -> 0 -> -0.5 -> 0; omega = -2*(0-1) - 1*(-0.5-0) + 1*(0+0.5) = 3; Delta = -1
    # w[1]: 2 -> 2 -> 2 -> 1.5;  omega = -1*(1.5-2) = 0.5;                       Delta = -0.5
    si.after_task(toy, toy_task(0))
    torch.testing.assert_close(si.importance[0], torch.tensor([3 / (1 + 0.25), 0.5 / (0.25 + 0.25)]))
    torch.testing.assert_close(si.anchor[0], torch.tensor([0.0, 1.5]))
    assert float(si.omega[0].abs().max()) == 0.0

    # task 1: the penalty's gradient joins the step, but omega integrates the task gradient alone
    si.before_task(toy, toy_task(1))
    omega_want = torch.zeros(2)
    for g in ([1.0, -1.0], [0.5, 0.5]):
        before = toy.w.detach().clone()
        value, total = toy_step(si, toy, g)
        importance = torch.tensor([2.4, 1.0])
        assert value == pytest.approx(float(0.5 * (importance * (before - torch.tensor([0.0, 1.5])) ** 2).sum()))
        torch.testing.assert_close(total, torch.tensor(g) + 2 * 0.5 * importance * (before - torch.tensor([0.0, 1.5])))
        omega_want -= torch.tensor(g) * (toy.w.detach() - before)
    torch.testing.assert_close(si.omega[0], omega_want)
    start = torch.tensor([0.0, 1.5])
    si.after_task(toy, toy_task(1))
    delta = toy.w.detach() - start
    torch.testing.assert_close(si.importance[0], torch.tensor([2.4, 1.0]) + omega_want / (delta ** 2 + 0.25))


def reference_si(model: nn.Module, batches: list[list[tuple]], lr: float, lam: float, xi: float):
    """SI written out plainly: autograd of the regularised loss for the step, of the task loss for omega."""
    params = list(model.parameters())
    importance = [torch.zeros_like(p) for p in params]
    anchor = None
    for task in batches:
        start = [p.detach().clone() for p in params]
        omega = [torch.zeros_like(p) for p in params]
        for x, y in task:
            task_loss = nn.functional.cross_entropy(model(x, torch.zeros(len(x), dtype=torch.int64)), y)
            g_task = torch.autograd.grad(task_loss, params, retain_graph=True)
            loss = task_loss
            if anchor is not None:
                loss = loss + lam * sum((w * (p - a) ** 2).sum() for p, w, a in zip(params, importance, anchor))
            g = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, gp, gt, o in zip(params, g, g_task, omega):
                    step = -lr * gp
                    o -= gt * step
                    p += step
        with torch.no_grad():
            importance = [w + o / ((p - s) ** 2 + xi) for w, o, p, s in zip(importance, omega, params, start)]
            anchor = [p.detach().clone() for p in params]
    return importance, anchor


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))

    def forward(self, x, task_ids):
        return self.net(x)


def test_si_through_the_training_step_equals_the_reference_loop():
    torch.manual_seed(0)
    model, reference = Tiny(), Tiny()
    reference.load_state_dict(model.state_dict())
    batches = [[(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(4)] for _ in range(3)]
    si = SI(lambda_=0.7, xi=0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for t, task in enumerate(batches):
        si.before_task(model, toy_task(t))
        for x, y in task:
            train_step(model, si, optimizer, x, torch.zeros(len(x), dtype=torch.int64), y)
        si.after_task(model, toy_task(t))
    importance, anchor = reference_si(reference, batches, 0.2, 0.7, 0.05)
    for mine, want in zip(si.importance, importance):
        torch.testing.assert_close(mine, want, rtol=1e-4, atol=1e-6)
    for mine, want in zip(si.anchor, anchor):
        torch.testing.assert_close(mine, want, rtol=1e-5, atol=1e-6)
    assert float(min(w.min() for w in si.importance)) != float(max(w.max() for w in si.importance))


def test_penalty_gradient_is_the_gradient_of_the_penalty_in_a_run(monkeypatch):
    seen = capture(monkeypatch)
    result = run(small_config(strategy={"name": "si", "lambda": 3.0}, benchmark={"n_tasks": 2}))
    model, si = seen["model"], seen["strategy"]
    assert result.history[-1]["penalty"] > 0 and result.history[-1]["importance_norm"] > 0
    assert_penalty_grad_is_autograd(si, model)


def test_state_dict_round_trip_and_resume_give_the_uninterrupted_result():
    toy = Toy([1.0, 2.0])
    si = SI(lambda_=0.5)
    si.before_task(toy, toy_task(0))
    toy_step(si, toy, [2.0, 0.5])
    si.after_task(toy, toy_task(0))
    buffer = io.BytesIO()
    torch.save(si.state_dict(), buffer)
    buffer.seek(0)
    stronger = SI(lambda_=5.0)
    stronger.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        toy.w += 1.0
    assert float(stronger.penalty(toy).detach()) == pytest.approx(10 * float(si.penalty(toy).detach()))

    config = small_config(strategy={"name": "si", "lambda": 2.0, "xi": 0.01}, benchmark={"train_samples_per_task": 200},
                          train={"optimizer": "adam", "lr": 0.01, "reset_optimizer": False})
    checkpoints = {}
    full = run(config, [lambda r: checkpoints.__setitem__(r.task, r.checkpoint())])
    resumed = run(config, resume_from=checkpoints[2])
    assert resumed.test_matrix == full.test_matrix and resumed.history == full.history


@pytest.mark.parametrize("strategy, field", [({"lambda": 0.0}, "strategy.lambda"), ({"xi": 0}, "strategy.xi"),
                                             ({"xi": float("inf")}, "strategy.xi"),
                                             ({"alpha": 0.5}, "strategy.alpha")])
def test_bad_si_config_is_rejected_naming_the_field(strategy, field):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"strategy": {"name": "si", **strategy}})
    assert err.value.field == field


def test_config_builds_si_with_its_declared_defaults():
    si = build_strategy(ExperimentConfig.from_dict({"strategy": {"name": "si"}}).strategy)
    assert isinstance(si, SI) and (si.lambda_, si.xi) == (1.0, 0.1)
    with pytest.raises(ValueError, match="^xi:"):
        SI(xi=-1.0)
