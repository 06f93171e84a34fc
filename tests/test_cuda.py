"""The CUDA-only branches, each against its CPU counterpart: fused optimisers, the foreach penalty
path, bf16 autocast, the Fisher estimators, RWalk's statistics, determinism and resume on the GPU.

Every test is marked ``cuda`` and skipped, with the reason, on a machine without a CUDA device
(CI and the development machines have none). ``benchmarks/gpu_check.sh`` runs them on a GPU.
"""

from __future__ import annotations

import copy

import pytest
import torch

from clcore.config import BenchmarkConfig, ModelConfig
from clcore.data import build_benchmark
from clcore.fisher import ESTIMATORS, estimate_fisher
from clcore.models import build_model
from clcore.strategies.quadratic import QuadraticPenalty
from clcore.strategies.rwalk import RWalk
from clcore.train import make_optimizer, run

from conftest import small_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]
CUDA = torch.device("cuda")


def test_optimisers_are_fused_on_cuda():
    model = torch.nn.Linear(4, 2).to(CUDA)
    for optimizer in ("sgd", "adam"):
        train = small_config({"train.optimizer": optimizer, "train.device": "cuda"}).train
        opt = make_optimizer(model, train, CUDA)
        assert opt.defaults["fused"] is True, optimizer


@pytest.mark.parametrize("strategy", [{"strategy.name": "naive"}, {"strategy.name": "ewc", "strategy.lambda": 100.0},
                                      {"strategy.name": "rwalk", "strategy.lambda": 1.0}])
def test_a_cuda_run_matches_the_cpu_run_and_repeats_exactly(synthetic, strategy):
    config = small_config({**strategy, "train.device": "cuda", "train.optimizer": "adam", "train.lr": 0.003})
    first, again = run(config, raw=synthetic), run(config, raw=synthetic)
    assert first.device.startswith("cuda")
    assert first.val_matrix == again.val_matrix and first.history == again.history  # same seed, same device
    on_cpu = run(config.with_overrides({"train.device": "cpu"}), raw=synthetic)
    gap = max(abs(a - b) for ra, rb in zip(first.val_matrix, on_cpu.val_matrix) for a, b in zip(ra, rb))
    assert gap <= 0.1, (first.val_matrix, on_cpu.val_matrix)  # different kernels and batch orders: close, not equal


def test_quadratic_penalty_foreach_path_equals_the_cpu_buffer_path():
    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (10, 64)]
    weight = [torch.rand(s) for s in shapes]
    anchor = [torch.randn(s) for s in shapes]
    params = [torch.randn(s) for s in shapes]
    grads_cpu = [torch.randn(s) for s in shapes]
    grads_cuda = [g.to(CUDA) for g in grads_cpu]
    QuadraticPenalty(weight, anchor).add_grad(params, grads_cpu)
    cuda = QuadraticPenalty([w.to(CUDA) for w in weight], [a.to(CUDA) for a in anchor])
    assert cuda.scratch is None  # the foreach kernel, no kept buffer
    cuda.add_grad([p.to(CUDA) for p in params], grads_cuda)
    for a, b in zip(grads_cpu, grads_cuda):
        torch.testing.assert_close(a, b.cpu())


def test_amp_trains_in_bfloat16_on_cuda(synthetic, monkeypatch):
    seen = []
    config = small_config({"train.device": "cuda", "train.amp": True})
    import clcore.train

    build = clcore.train.build_model

    def model_with_probe(*args, **kwargs):
        model = build(*args, **kwargs)
        model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        return model

    monkeypatch.setattr(clcore.train, "build_model", model_with_probe)
    result = run(config, raw=synthetic)
    assert torch.bfloat16 in seen  # training steps ran under autocast
    assert result.metrics["val_average_accuracy"] > 0.5


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_fisher_on_cuda_equals_the_cpu_estimate(synthetic, estimator):
    bench = build_benchmark(BenchmarkConfig(name="synthetic", scenario="task", n_tasks=5), synthetic)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_sizes=[16]), input_shape=bench.input_shape, scenario="task", n_tasks=5,
                        classes_per_task=2, mean=bench.mean, std=bench.std)
    split = bench.tasks[1].train
    gen = torch.Generator().manual_seed(0)
    cpu = estimate_fisher(model, split, estimator, max_samples=64, batch_size=16, generator=gen)
    cuda_bench = build_benchmark(BenchmarkConfig(name="synthetic", scenario="task", n_tasks=5), synthetic, CUDA)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    on_gpu = estimate_fisher(copy.deepcopy(model).to(CUDA), cuda_bench.tasks[1].train, estimator, max_samples=64,
                             batch_size=16, generator=gen)
    if estimator == "sampled":  # labels drawn on another device's generator: same scale, not the same draw
        total = sum(float(v.sum()) for v in cpu.values())
        assert sum(float(v.sum()) for v in on_gpu.values()) == pytest.approx(total, rel=0.5)
        return
    for key in cpu:
        torch.testing.assert_close(on_gpu[key].cpu(), cpu[key], rtol=1e-4, atol=1e-7)


def test_rwalk_statistics_on_cuda_equal_the_cpu_ones():
    from test_rwalk import Toy, toy_task  # the CPU hand computation there pins the values themselves

    results = []
    for device in ("cpu", "cuda"):
        toy, rwalk = Toy([1.0, 2.0]).to(device), RWalk(lambda_=0.5, alpha=0.5, delta_t=2)
        rwalk.before_task(toy, toy_task(0))
        for g in ([2.0, 0.0], [1.0, 0.0], [-1.0, 1.0]):
            toy.w.grad = torch.tensor(g, device=device)
            rwalk.add_penalty_grad(toy)
            with torch.no_grad():
                toy.w -= 0.5 * toy.w.grad
            rwalk.after_step(toy)
        rwalk.after_task(toy, toy_task(0))
        results.append([t.cpu() for t in (rwalk.fisher[0], rwalk.score[0], rwalk.weights[0])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_resume_on_cuda_equals_the_uninterrupted_run(synthetic):
    config = small_config({"train.device": "cuda", "train.optimizer": "sgd", "train.momentum": 0.9,
                           "model.dropout": 0.2})
    saved = {}
    full = run(config, [lambda r: r.task == 1 and saved.setdefault("c", r.checkpoint())], raw=synthetic)
    resumed = run(config, resume_from=saved["c"], raw=synthetic)
    assert "cuda" in saved["c"]["rng"]
    assert resumed.val_matrix == full.val_matrix and resumed.test_matrix == full.test_matrix
