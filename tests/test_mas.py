"""Memory Aware Synapses: the importance against a per-sample autograd loop, its accumulation over
tasks, the penalty's gradient, masked class-IL units, state, bad input, and MAS inside `clcore.run`."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clcore.config import ConfigError, ExperimentConfig
from clcore.data import Split
from clcore.strategies import build_strategy
from clcore.strategies.mas import MAS, output_sensitivity
from clcore.train import run

from conftest import assert_penalty_grad_is_autograd, small_config
from test_rwalk import capture


class Tiny(nn.Module):
    """Dropout and BatchNorm, so a pass in train mode would differ from the eval-mode one."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3))

    def forward(self, x, task_ids):
        return self.net(x)


def split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 4, generator=g), torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))


def loop_importance(model: nn.Module, data: Split, n: int) -> dict[str, torch.Tensor]:
    """The paper's definition, one autograd backward per sample, in eval mode."""
    model.eval()
    out = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(n):
        model.zero_grad()
        model(data.x[i:i + 1], data.task_ids[i:i + 1]).square().sum().backward()
        for k, p in model.named_parameters():
            out[k] += p.grad.abs()
    return {k: v / n for k, v in out.items()}


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_importance_is_the_per_sample_loop_whatever_the_batch_size(batch_size):
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.net[1].running_mean.uniform_(-1, 1)
        model.net[1].running_var.uniform_(0.5, 2)
    model.train()
    data = split(40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mine = output_sensitivity(model, data, max_samples=30, batch_size=batch_size)
    assert all(m.training for m in model.modules())  # modes put back
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing changed
    want = loop_importance(model, data, 30)
    for k in want:
        torch.testing.assert_close(mine[k], want[k], rtol=1e-5, atol=1e-7)
    assert all(float(v.max()) > 0 for v in mine.values())


def test_masked_output_units_are_left_out_and_give_finite_importance():
    class Masked(Tiny):
        def forward(self, x, task_ids):
            return self.net(x).masked_fill(torch.tensor([False, False, True]), float("-inf"))

    torch.manual_seed(1)
    model, data = Masked(), split(10)
    mine = output_sensitivity(model, data)
    assert all(torch.isfinite(v).all() for v in mine.values())
    assert float(mine["net.4.weight"][2].abs().max()) == 0.0  # the masked unit's weights: no importance
    model.eval()
    want = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(10):  # the loop over the two visible units only
        model.zero_grad()
        model.net(data.x[i:i + 1])[:, :2].square().sum().backward()
        for k, p in model.named_parameters():
            want[k] += p.grad.abs() / 10
    for k in want:
        torch.testing.assert_close(mine[k], want[k], rtol=1e-5, atol=1e-7)


def test_importance_accumulates_with_alpha_and_the_penalty_uses_it(monkeypatch):
    seen = capture(monkeypatch)
    sensitivities = []
    import clcore.strategies.mas as mas_module
    real = mas_module.output_sensitivity
    monkeypatch.setattr(mas_module, "output_sensitivity",
                        lambda *a, **k: sensitivities.append(real(*a, **k)) or sensitivities[-1])
    result = run(small_config(strategy={"name": "mas", "lambda": 2.0, "alpha": 0.25}, benchmark={"n_tasks": 5, "train_samples_per_task": 200}))
    mas = seen["strategy"]
    assert len(sensitivities) == 5 and mas.tasks_seen == 5
    names = mas.param_names
    want = [torch.zeros_like(sensitivities[0][k]) for k in names]
    for s in sensitivities:
        want = [0.25 * w + 0.75 * s[k] for w, k in zip(want, names)]
    for mine, w in zip(mas.importance, want):
        torch.testing.assert_close(mine, w)
    assert result.history[0]["penalty"] == 0.0 and result.history[-1]["penalty"] > 0

    model = seen["model"]
    assert_penalty_grad_is_autograd(mas, model)


def test_class_incremental_run_has_finite_importance_and_resumes_exactly():
    config = small_config(strategy={"name": "mas", "lambda": 10.0, "importance_samples": 64},
                          benchmark={"scenario": "class", "train_samples_per_task": 200},
                          train={"optimizer": "adam", "lr": 0.01, "reset_optimizer": False})
    checkpoints = {}
    full = run(config, [lambda r: checkpoints.__setitem__(r.task, r.checkpoint())])
    assert all(math.isfinite(h["importance_norm"]) and math.isfinite(h["penalty"]) for h in full.history)
    resumed = run(config, resume_from=checkpoints[2])
    assert resumed.test_matrix == full.test_matrix and resumed.history == full.history


@pytest.mark.parametrize("strategy, field", [({"lambda": -1.0}, "strategy.lambda"), ({"alpha": 1.5}, "strategy.alpha"),
                                             ({"importance_samples": 0}, "strategy.importance_samples"),
                                             ({"xi": 0.1}, "strategy.xi")])
def test_bad_mas_config_is_rejected_naming_the_field(strategy, field):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"strategy": {"name": "mas", **strategy}})
    assert err.value.field == field


def test_config_builds_mas_with_its_declared_defaults():
    mas = build_strategy(ExperimentConfig.from_dict({"strategy": {"name": "mas"}}).strategy)
    assert isinstance(mas, MAS)
    assert (mas.lambda_, mas.alpha, mas.importance_samples, mas.importance_batch_size) == (1.0, 0.5, None, 256)
