"""EWC++: RWalk's running Fisher alone, by hand and against RWalk itself; penalty gradient (resume: test_rwalk)."""

from __future__ import annotations

import pytest
import torch

from clcore import metrics as M
from clcore.config import ConfigError, ExperimentConfig
from clcore.strategies import build_strategy
from clcore.strategies.ewcpp import EWCpp
from clcore.strategies.rwalk import RWalk
from clcore.train import run

from conftest import assert_penalty_grad_is_autograd, small_config
from test_rwalk import Toy, capture, toy_step, toy_task


def test_fisher_weights_and_penalty_match_a_hand_computation():
    toy, ewcpp = Toy([1.0, 2.0]), EWCpp(lambda_=0.5, alpha=0.5)
    ewcpp.before_task(toy, toy_task(0))
    for g in ([2.0, 0.0], [1.0, 0.0], [-1.0, 1.0]):
        value, total = toy_step(ewcpp, toy, g)
        assert value == 0.0 and torch.equal(total, torch.tensor(g))  # no penalty during the first task
    ewcpp.after_task(toy, toy_task(0))
    # F: [4, 0] -> [0.5*1 + 0.5*4, 0] = [2.5, 0] -> [0.5*1 + 0.5*2.5, 0.5*1 + 0] = [1.75, 0.5]
    torch.testing.assert_close(ewcpp.fisher[0], torch.tensor([1.75, 0.5]))
    torch.testing.assert_close(ewcpp.weights[0], torch.tensor([1.0, 0.5 / 1.75]))
    anchor = toy.w.detach().clone()  # [1, 2] - 0.5 * ([2, 0] + [1, 0] + [-1, 1]) = [0, 1.5]
    torch.testing.assert_close(anchor, torch.tensor([0.0, 1.5]))
    torch.testing.assert_close(ewcpp.anchor[0], anchor)

    ewcpp.before_task(toy, toy_task(1))
    value, total = toy_step(ewcpp, toy, [1.0, -1.0])  # at the anchor: penalty 0, gradient unchanged
    assert value == 0.0 and torch.equal(total, torch.tensor([1.0, -1.0]))
    moved = toy.w.detach() - anchor                                        # [-0.5, 0.5]
    value, total = toy_step(ewcpp, toy, [0.0, 2.0])
    w = torch.tensor([1.0, 0.5 / 1.75])
    assert value == pytest.approx(0.5 * float((w * moved ** 2).sum()))          # lambda sum w d^2, no 1/2
    torch.testing.assert_close(total, torch.tensor([0.0, 2.0]) + 2 * 0.5 * w * moved)
    ewcpp.after_task(toy, toy_task(1))
    # the Fisher runs on (never reset); the weights are replaced by the new normalised Fisher
    fisher = torch.tensor([0.5 * 1 + 0.5 * 1.75, 0.5 * 1 + 0.5 * 0.5])
    fisher = torch.tensor([0.5 * 0 + 0.5 * fisher[0], 0.5 * 4 + 0.5 * fisher[1]])
    torch.testing.assert_close(ewcpp.fisher[0], fisher)
    torch.testing.assert_close(ewcpp.weights[0], fisher / fisher.max())
    torch.testing.assert_close(ewcpp.anchor[0], toy.w.detach())


def test_penalty_gradient_is_the_gradient_of_the_penalty(monkeypatch):
    seen = capture(monkeypatch)
    run(small_config(strategy={"name": "ewcpp", "lambda": 3.0}, benchmark={"n_tasks": 2}))
    assert_penalty_grad_is_autograd(seen["strategy"], seen["model"])


def test_it_remembers_better_than_fine_tuning():
    """On the synthetic stream, an EWC++ penalty keeps more of the earlier tasks than naive training."""
    config = small_config(benchmark={"n_tasks": 5, "scenario": "domain"}, train={"epochs": 2})
    naive = run(config)
    ewcpp = run(config.with_overrides({"strategy.name": "ewcpp", "strategy.lambda": 3.0}))
    assert M.forgetting(ewcpp.test_matrix) < M.forgetting(naive.test_matrix)
    assert ewcpp.history[-1]["penalty"] > 0


@pytest.mark.parametrize("strategy, field", [
    ({"lambda": 0.0}, "strategy.lambda"),
    ({"alpha": 1.5}, "strategy.alpha"),
    ({"delta_t": 10}, "strategy.delta_t"),  # an RWalk parameter: EWC++ has no path score
])
def test_bad_ewcpp_config_is_rejected_naming_the_field(strategy, field):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"strategy": {"name": "ewcpp", **strategy}})
    assert err.value.field == field


def test_config_builds_the_strategy_it_names():
    config = ExperimentConfig.from_dict({"strategy": {"name": "ewcpp", "lambda": 10.0, "alpha": 0.9}})
    ewcpp = build_strategy(config.strategy)
    assert isinstance(ewcpp, EWCpp) and (ewcpp.lambda_, ewcpp.alpha) == (10.0, 0.9)


def test_fisher_every_averages_a_window_of_squared_gradients_as_a_gem_code_does():
    """fisher_every 2, alpha 0.5: F starts at 0; every 2nd step of a task F <- 0.5 * sum/2 + 0.5 * F; the open
    window is dropped at the task's end and windows restart with the next task."""
    toy, ewcpp = Toy([1.0, 2.0]), EWCpp(lambda_=0.5, alpha=0.5, fisher_every=2)
    ewcpp.before_task(toy, toy_task(0))
    for g in ([2.0, 0.0], [1.0, 0.0], [-1.0, 1.0], [0.0, 2.0], [3.0, 3.0]):
        toy_step(ewcpp, toy, g)
    # step 2: F = 0.5 * ([4, 0] + [1, 0]) / 2 = [1.25, 0]; step 4: F = 0.5 * [1.25, 0] + 0.5 * ([1, 1] + [0, 4]) / 2
    torch.testing.assert_close(ewcpp.fisher[0], torch.tensor([0.875, 1.25]))
    ewcpp.after_task(toy, toy_task(0))  # step 5's [9, 9] is an open window: dropped
    torch.testing.assert_close(ewcpp.weights[0], torch.tensor([0.875 / 1.25, 1.0]))
    assert torch.equal(ewcpp.fisher_sum[0], torch.zeros(2))
    ewcpp.before_task(toy, toy_task(1))
    toy_step(ewcpp, toy, [1.0, 1.0])
    torch.testing.assert_close(ewcpp.fisher[0], torch.tensor([0.875, 1.25]))  # one step into the new window
    toy_step(ewcpp, toy, [1.0, -1.0])
    torch.testing.assert_close(ewcpp.fisher[0], torch.tensor([0.5 * 0.875 + 0.5, 0.5 * 1.25 + 0.5]))


@pytest.mark.parametrize("every", [1, 3])
def test_its_fisher_is_rwalks_and_its_weight_rwalks_fisher_term(every):
    """Same gradients, same alpha and window: the running Fisher of the two is identical, and EWC++'s weight is
    the first of RWalk's two normalised terms (RWalk's weight minus its normalised score)."""
    torch.manual_seed(0)
    toy_a, toy_b = Toy([0.3, -0.2]), Toy([0.3, -0.2])
    ewcpp = EWCpp(lambda_=1.0, alpha=0.7, fisher_every=every)
    rwalk = RWalk(lambda_=1.0, alpha=0.7, delta_t=3, fisher_every=every)
    for task in range(3):
        for strategy, toy in ((ewcpp, toy_a), (rwalk, toy_b)):
            strategy.before_task(toy, toy_task(task))
        for _ in range(7):
            g = torch.randn(2).tolist()
            toy_step(ewcpp, toy_a, g)
            toy_step(rwalk, toy_b, g)
            # the penalties differ, so the trajectories do too: keep the models equal by hand
            with torch.no_grad():
                toy_b.w.copy_(toy_a.w)
        ewcpp.after_task(toy_a, toy_task(task))
        rwalk.after_task(toy_b, toy_task(task))
        torch.testing.assert_close(ewcpp.fisher[0], rwalk.fisher[0])
        positive = rwalk.score[0].clamp(min=0)
        score_term = positive / positive.max() if positive.max() > 0 else torch.zeros_like(positive)
        torch.testing.assert_close(ewcpp.weights[0], rwalk.weights[0] - score_term)
