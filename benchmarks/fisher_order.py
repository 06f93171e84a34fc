"""How much larger the batch-mean Fisher is over class-grouped batches than over shuffled ones.

    python benchmarks/fisher_order.py [--batch-sizes 10,32,128,256] [--epochs 1] [--samples N]

Avalanche's EWCPlugin squares batch-mean gradients over a task's samples in the order its
benchmark stores them: grouped by class (its loader does not shuffle). clcore's ``batched``
estimator reads the shuffled split, ``batched_by_class`` the same samples grouped by class. So an
Avalanche ``ewc_lambda`` ports as ``lambda = 2 * ewc_lambda`` with ``batched_by_class``; with
``batched`` it would be that factor too weak. This prints the factor (total importance,
by-class / shuffled) for a 784-512-10 MLP on the first task of real Permuted MNIST, before training
and after ``--epochs`` of SGD (lr 0.01, batch 128), at each batch size, and the per-sample
``empirical`` estimate beside them (no order dependence). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

from clcore.config import BenchmarkConfig, ModelConfig
from clcore.data import build_benchmark, load_raw
from clcore.fisher import estimate_fisher
from clcore.models import build_model


def total(fisher: dict[str, torch.Tensor]) -> float:
    return sum(float(v.sum()) for v in fisher.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="10,32,128,256")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--samples", type=int, default=None, help="samples of the task (default: all)")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    config = BenchmarkConfig(name="permuted_mnist", scenario="domain", n_tasks=2, seed=0)
    bench = build_benchmark(config, load_raw(config))
    task = bench.tasks[0]
    split = task.train if args.samples is None else type(task.train)(
        task.train.x[:args.samples], task.train.y[:args.samples], task.train.task_ids[:args.samples])
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden_sizes=[512]), input_shape=bench.input_shape,
                        scenario="domain", n_tasks=2, classes_per_task=10, mean=bench.mean, std=bench.std)
    rows, out = [], {}
    for stage in ("untrained", f"after {args.epochs} epoch(s)"):
        if stage != "untrained":
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            model.train()
            for _ in range(args.epochs):
                for idx in torch.randperm(len(split)).split(128):
                    optimizer.zero_grad()
                    torch.nn.functional.cross_entropy(model(split.x[idx], split.task_ids[idx]), split.y[idx]).backward()
                    optimizer.step()
        empirical = total(estimate_fisher(model, split, "empirical"))
        for b in sizes:
            shuffled = total(estimate_fisher(model, split, "batched", batch_size=b))
            grouped = total(estimate_fisher(model, split, "batched_by_class", batch_size=b))
            rows.append((stage, b, shuffled, grouped, grouped / shuffled, empirical))
            out[f"{stage} b={b}"] = round(grouped / shuffled, 1)
    print(f"784-512-10 MLP, permuted MNIST task 0, {len(split)} samples; total Fisher (sum over parameters)")
    print(f"{'model':<22}{'batch':>6}{'batched (shuffled)':>20}{'batched_by_class':>18}{'factor':>8}{'empirical':>12}")
    for stage, b, shuffled, grouped, factor, empirical in rows:
        print(f"{stage:<22}{b:>6}{shuffled:>20.4g}{grouped:>18.4g}{factor:>8.1f}{empirical:>12.4g}")
    print(json.dumps({"by_class_over_shuffled": out}))


if __name__ == "__main__":
    main()
