"""Models: scenario heads (per-task slice, shared head, masking of unseen classes), normalisation,
backbones' shapes, and per-sample use under torch.func.vmap (as the Fisher estimators use it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from clcore.config import ModelConfig
from clcore.models import MLP, OutputHead, ReducedResNet18, SmallCNN, build_model


def _head_with_unit_logits(kind: str, n_tasks=3, k=2) -> OutputHead:
    """A head whose logit for output unit u is u, whatever the features (unit t*k + c: class c of
    task t's head with a multi head)."""
    head = OutputHead(4, kind, n_tasks, k)
    layers = head.heads if kind == "multi" else [head.linear]
    with torch.no_grad():
        start = 0
        for layer in layers:
            layer.weight.zero_()
            layer.bias.copy_(torch.arange(start, start + layer.out_features, dtype=torch.float32))
            start += layer.out_features
    return head


def test_multi_head_scores_each_sample_on_its_tasks_slice():
    head = _head_with_unit_logits("multi", n_tasks=3, k=2)
    assert [h.out_features for h in head.heads] == [2, 2, 2]
    task_ids = torch.tensor([0, 2, 1, 2, 0])
    logits = head(torch.randn(5, 4), task_ids)
    assert logits.shape == (5, 2)
    expected = torch.stack([torch.arange(2 * t, 2 * t + 2, dtype=torch.float32) for t in task_ids.tolist()])
    assert torch.equal(logits, expected)


def test_multi_head_gradient_reaches_only_the_tasks_slice():
    head = OutputHead(4, "multi", 3, 2)
    F.cross_entropy(head(torch.randn(8, 4), torch.full((8,), 1)), torch.randint(0, 2, (8,))).backward()
    grad_rows = torch.cat([h.weight.grad for h in head.heads]).abs().sum(1)
    assert (grad_rows[2:4] > 0).all() and (grad_rows[[0, 1, 4, 5]] == 0).all()
    assert head.idle_parameters([1]) == [*head.heads[0].parameters(), *head.heads[2].parameters()]
    assert head.idle_parameters(range(3)) == []


@pytest.mark.parametrize("optimizer, momentum", [("sgd", 0.9), ("adam", 0.0)])
def test_heads_of_other_tasks_do_not_move_under_weight_decay_or_leftover_momentum(optimizer, momentum, synthetic):
    """Task 0's head after task 0 is task 0's head after task 4: no decay, no momentum, no Adam step
    reach an inactive head, even with the optimiser kept across tasks."""
    from clcore.train import run
    from conftest import small_config

    seen = {}

    def keep_head_0(report):
        seen[report.task] = report.checkpoint()["model"]["head.heads.0.weight"].clone()

    config = small_config({"train.optimizer": optimizer, "train.momentum": momentum, "train.weight_decay": 0.01,
                           "train.reset_optimizer": False, "train.lr": 0.05})
    run(config, [keep_head_0], raw=synthetic)
    assert float(seen[0].norm()) > 0
    assert torch.equal(seen[0], seen[4])
    other = run(config.with_overrides({"strategy.name": "joint"}), [keep_head_0], raw=synthetic)
    assert other.metrics["val_average_accuracy"] > 0.5  # joint trains every seen head: they do move
    assert not torch.equal(seen[0], seen[4])


def test_single_head_is_shared_by_all_tasks():
    head = _head_with_unit_logits("single", n_tasks=3, k=2)
    assert head.linear.out_features == 2
    logits = head(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert torch.equal(logits, torch.tensor([[0.0, 1.0]] * 3))


def test_incremental_head_masks_the_classes_of_unseen_tasks():
    head = _head_with_unit_logits("incremental", n_tasks=3, k=2)
    assert int(head.seen_tasks) == 1
    logits = head(torch.randn(2, 4), torch.tensor([0, 0]))
    assert torch.equal(logits[0], torch.tensor([0.0, 1.0] + [float("-inf")] * 4))
    head.set_seen_tasks(2)
    logits = head(torch.randn(2, 4), torch.tensor([1, 0]))  # task ids do not matter in class-IL
    assert torch.equal(logits[1], torch.tensor([0.0, 1.0, 2.0, 3.0, float("-inf"), float("-inf")]))
    assert logits.argmax(1).tolist() == [3, 3]  # never predicts an unseen class
    head.set_seen_tasks(3)
    assert torch.isfinite(head(torch.randn(1, 4), torch.tensor([0]))).all()
    assert "seen_tasks" in head.state_dict()  # restored by checkpoints


def test_incremental_head_passes_no_gradient_to_unseen_units():
    head = OutputHead(4, "incremental", 3, 2)
    head.set_seen_tasks(2)
    loss = F.cross_entropy(head(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), torch.randint(0, 4, (8,)))
    loss.backward()
    assert torch.isfinite(loss)
    rows = head.linear.weight.grad.abs().sum(1)
    assert (rows[:4] > 0).all() and (rows[4:] == 0).all()
    assert torch.isfinite(head.linear.weight.grad).all()


@pytest.mark.parametrize("scenario, kind, units", [("task", "multi", 2), ("domain", "single", 2),
                                                   ("class", "incremental", 10)])
def test_build_model_picks_the_scenarios_head(scenario, kind, units):
    model = build_model(ModelConfig(hidden_sizes=[8]), input_shape=(1, 8, 8), scenario=scenario, n_tasks=5,
                        classes_per_task=2, mean=(0.5,), std=(0.25,))
    assert model.head.kind == kind
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert model(x, torch.tensor([0, 1, 4])).shape == (3, units)


def test_model_normalises_uint8_input_with_the_benchmarks_mean_and_std():
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.1, 0.25)
    model = build_model(ModelConfig(hidden_sizes=[8]), input_shape=(3, 4, 4), scenario="domain", n_tasks=1,
                        classes_per_task=2, mean=mean, std=std)
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    x_before = x.clone()
    model(x, torch.zeros(5, dtype=torch.long))
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], expected)
    assert torch.equal(x, x_before)
    x_float = x.float()  # a float input is not modified in place either
    model(x_float, torch.zeros(5, dtype=torch.long))
    assert torch.equal(x_float, x.float())


def test_mlp_layers_and_dropout():
    mlp = MLP(64, [32, 16], dropout=0.5)
    linears = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in mlp.net) == 2 and mlp.out_features == 16
    assert not any(isinstance(m, torch.nn.Dropout) for m in MLP(64, [32], dropout=0.0).net)


@pytest.mark.parametrize("name, shape", [("mlp", (1, 28, 28)), ("cnn", (1, 28, 28)), ("cnn", (3, 32, 32)),
                                         ("resnet18", (3, 32, 32))])
def test_backbones_on_benchmark_shapes(name, shape):
    model = build_model(ModelConfig(name=name, hidden_sizes=[64]), input_shape=shape, scenario="class", n_tasks=5,
                        classes_per_task=2, mean=(0.5,) * shape[0], std=(0.25,) * shape[0])
    backbone = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ReducedResNet18}[name]
    assert isinstance(model.backbone, backbone)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    logits = model(x, torch.zeros(2, dtype=torch.long))
    assert logits.shape == (2, 10) and torch.isfinite(logits[:, :2]).all()


def test_same_seed_same_initial_weights():
    def make():
        torch.manual_seed(5)
        return build_model(ModelConfig(), input_shape=(1, 28, 28), scenario="task", n_tasks=5, classes_per_task=2,
                           mean=(0.1,), std=(0.3,))

    a, b = make(), make()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", ["mlp", "cnn"])  # resnet18 works too, but takes ~10 s here
def test_per_sample_gradients_under_vmap_match_a_loop(name):
    """One sample goes in as a batch of one (x[None]), the convention `clcore.fisher` relies on."""
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = build_model(ModelConfig(name=name, hidden_sizes=[16]), input_shape=shape, scenario="task", n_tasks=3,
                        classes_per_task=2, mean=(0.5,) * shape[0], std=(0.25,) * shape[0]).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
    t, y = torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0, 0, 1])

    def loss(p, xs, ts, ys):
        return F.cross_entropy(functional_call(model, p, (xs[None], ts[None])), ys[None])

    batched = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, t, y)
    for i in range(4):
        single = grad(loss)(params, x[i], t[i], y[i])
        for k in params:
            torch.testing.assert_close(batched[k][i], single[k], rtol=1e-4, atol=1e-6)
