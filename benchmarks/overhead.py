"""Per-step cost of EWC and RWalk relative to plain fine-tuning, and the cost of each Fisher estimator.

    python benchmarks/overhead.py [--device cpu|cuda] [--threads N] [--batch 128] [--rounds 100] [--steps 20]
                                  [--fisher-model mlp|cnn|resnet18] [--fisher-samples 1000]

Model: the MLP 784-256-256-10 (single head) on permuted-MNIST-shaped uint8 tensors, batch 128, SGD,
torch using every core unless ``--threads`` says otherwise. The training step is exactly
`clcore.train.train_step`, the one `clcore.train.run` takes (one forward, task-loss backward,
``strategy.add_penalty_grad``, ``optimizer.step``, ``strategy.after_step``). Every variant trains its own copy of the same network; variants take turns
(round-robin, ``--steps`` steps per turn, order alternating) after a warm-up, and each ratio is the
median over rounds of (variant time / naive time in the same round), so load from other processes
hits numerator and denominator alike. The fastest-round ratio is printed next to it.

Variants: EWC separate after 1 and after 20 tasks (the penalty is active), EWC online, RWalk
(penalty active, score updates every delta_t = 10 steps included), and every other strategy in
`clcore.strategies.catalogue` at its declared defaults after one task (so a new strategy gets its
row without an edit here).

Fisher estimators: milliseconds per 1,000 samples for `clcore.fisher.estimate_fisher`
(``fisher_batch_size`` 256) as it runs by default (Linear, Conv2d and BatchNorm layers factored, see
`clcore.fisher`) and with every parameter through ``vmap(grad)`` (``factor_layers=False``), next to a
Python loop computing the same quantity (one autograd backward per sample, and per label for
``exact``; for ``batched``, which has no per-sample form, the loop over minibatches that Avalanche
runs), the loop timed on fewer samples and scaled to 1,000. Each is timed after a warm-up pass on
the same number of samples. ``--fisher-model`` times them on the same MLP (default) or on the
library's CIFAR networks (``cnn``, ``resnet18``) with 3x32x32 inputs.

Targets: every EWC variant <= 1.10x naive, RWalk <= 1.35x, separate after 20 tasks within 5% of
after 1, the per-sample estimators >= 10x faster than the loop. The last line is JSON
(``fisher_speedup_vs_loop``: the default path; ``fisher_vmap_speedup_vs_loop``: vmap only).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from clcore.config import ModelConfig
from clcore.data import Split, Task
from clcore.fisher import estimate_fisher
from clcore.models import build_model
from clcore.strategies import EWC, Naive, RWalk, catalogue, strategy_class
from clcore.train import train_step

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def make_task(task_id: int, n: int, device: torch.device, generator: torch.Generator) -> Task:
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator).to(device)
    y = torch.randint(0, 10, (n,), generator=generator).to(device)
    split = Split(x, y, torch.full((n,), task_id, dtype=torch.int64, device=device))
    return Task(task_id, tuple(range(10)), split, split, split)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One variant: its own model, optimiser and strategy; `steps(k)` runs k training steps."""

    def __init__(self, name, strategy, base_model, tasks_before, task, batch):
        self.name, self.strategy, self.batch = name, strategy, batch
        self.model = copy.deepcopy(base_model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.task = task
        self.cursor = 0
        for past in tasks_before:  # train a few steps on each past task, then let the strategy consolidate
            strategy.before_task(self.model, past)
            self.steps(10, past)
            strategy.after_task(self.model, past)
        strategy.before_task(self.model, task)

    def steps(self, k: int, task: Task | None = None) -> None:
        data = (task or self.task).train
        model, strategy, optimizer = self.model, self.strategy, self.optimizer
        model.train()
        for _ in range(k):
            b = self.batch
            start = (self.cursor * b) % (len(data) - b + 1)
            self.cursor += 1
            train_step(model, strategy, optimizer, data.x[start:start + b], data.task_ids[start:start + b],
                       data.y[start:start + b])


def time_steps(trainers: list[Trainer], rounds: int, steps: int, warmup: int, device) -> dict[str, list[float]]:
    """Seconds per step of each variant in each round (variants take turns, order alternating)."""
    for tr in trainers:
        tr.steps(warmup)
    per_round: dict[str, list[float]] = {tr.name: [] for tr in trainers}
    for r in range(rounds):
        order = trainers if r % 2 == 0 else trainers[::-1]
        for tr in order:
            sync(device)
            start = time.perf_counter()
            tr.steps(steps)
            sync(device)
            per_round[tr.name].append((time.perf_counter() - start) / steps)
    return per_round


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a / b (both measured in the same round)."""
    return statistics.median(x / y for x, y in zip(a, b))


def fisher_loop(model, split: Split, estimator: str, n: int, batch_size: int) -> None:
    """The same estimate with a Python loop (per sample, or per minibatch for `batched`), eval mode."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    if estimator == "batched":
        for s in range(0, n, batch_size):
            model.zero_grad()
            F.cross_entropy(model(split.x[s:s + batch_size], split.task_ids[s:s + batch_size]),
                            split.y[s:s + batch_size]).backward()
            for f, p in zip(fisher, params):
                f += p.grad.square()
        return
    for i in range(n):
        logits = model(split.x[i:i + 1], split.task_ids[i:i + 1])
        probs = logits.softmax(-1)[0].detach()
        if estimator == "exact":
            labels = [(c, probs[c]) for c in range(logits.shape[1])]
        elif estimator == "sampled":
            labels = [(int(torch.multinomial(probs, 1)), 1.0)]
        elif estimator == "predicted":
            labels = [(int(probs.argmax()), 1.0)]
        else:
            labels = [(int(split.y[i]), 1.0)]
        for j, (c, weight) in enumerate(labels):
            model.zero_grad()
            F.cross_entropy(logits, torch.tensor([c], device=logits.device)).backward(retain_graph=j < len(labels) - 1)
            for f, p in zip(fisher, params):
                f.add_(p.grad.square(), alpha=float(weight))


# the estimators timed: the per-sample label sources, and one batch grouping (the others add a sort by class, a
# label pass, or the per-sample machinery of `exact`, each timed here already)
TIMED = ("exact", "empirical", "sampled", "predicted", "batched")


def time_fisher(model, split: Split, device, repeats: int, samples: int,
                loop_samples: int) -> dict[str, tuple[float, ...]]:
    """{estimator: (ms per 1,000 samples by default, with vmap only, with the loop)}."""
    def timed(fn, n):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return (time.perf_counter() - start) * 1000.0 * 1000 / n

    out = {}
    for estimator in TIMED:
        runs = {"default": [], "vmap": [], "loop": []}
        for factor in (True, False):  # warm-up on as many samples (the allocator's heap grows once)
            estimate_fisher(model, split, estimator, max_samples=samples, batch_size=256, factor_layers=factor)
        for _ in range(repeats):
            for name, factor in (("default", True), ("vmap", False)):
                runs[name].append(timed(lambda: estimate_fisher(model, split, estimator, max_samples=samples,
                                                                batch_size=256, factor_layers=factor), samples))
            n_loop = samples if estimator == "batched" else loop_samples
            runs["loop"].append(timed(lambda: fisher_loop(model, split, estimator, n_loop, 256), n_loop))
        out[estimator] = tuple(statistics.median(runs[k]) for k in ("default", "vmap", "loop"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--batch", type=int, default=128, help="training batch size (default: 128)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--fisher-repeats", type=int, default=3)
    parser.add_argument("--loop-samples", type=int, default=200)
    parser.add_argument("--fisher-samples", type=int, default=1000, help="samples per estimate (default: 1000)")
    parser.add_argument("--fisher-model", choices=("mlp", "cnn", "resnet18"), default="mlp",
                        help="network the Fisher estimators are timed on (default: the MLP above)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    model = build_model(ModelConfig(name="mlp", hidden_sizes=[256, 256]), input_shape=(1, 28, 28), scenario="domain",
                        n_tasks=20, classes_per_task=10, mean=MNIST_MEAN, std=MNIST_STD).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    past = [make_task(t, 1024, device, g) for t in range(20)]
    current = make_task(20, 8192, device, g)
    ewc_args = dict(fisher="empirical", fisher_samples=256, fisher_batch_size=256)
    trainers = [
        Trainer("naive", Naive(), model, [], current, args.batch),
        Trainer("ewc_separate_1", EWC(mode="separate", **ewc_args), model, past[:1], current, args.batch),
        Trainer("ewc_separate_20", EWC(mode="separate", **ewc_args), model, past, current, args.batch),
        Trainer("ewc_online", EWC(mode="online", decay_factor=0.9, **ewc_args), model, past[:3], current, args.batch),
        Trainer("rwalk", RWalk(lambda_=0.1, alpha=0.9, delta_t=10), model, past[:1], current, args.batch),
    ]
    # Every other strategy in the catalogue, at its declared defaults, with its penalty active (after one task).
    timed = {"naive", "joint"} | {type(tr.strategy).name for tr in trainers}
    trainers += [Trainer(name, strategy_class(name)(), model, past[:1], current, args.batch)
                 for name in catalogue.names() if name not in timed]
    load = ", load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"device: {device} ({torch.get_num_threads()} threads of {os.cpu_count()} cores{load}, "
          f"torch {torch.__version__}); MLP 784-256-256-10 ({n_params:,} parameters), batch {args.batch}, SGD")
    per_round = time_steps(trainers, args.rounds, args.steps, args.warmup, device)
    naive = per_round["naive"]
    ratios = {name: median_ratio(v, naive) for name, v in per_round.items()}
    targets = {"ewc_separate_1": 1.10, "ewc_separate_20": 1.10, "ewc_online": 1.10, "rwalk": 1.35}
    print(f"\nper training step ({args.rounds} rounds x {args.steps} steps; median over rounds of the ratio "
          f"to naive in the same round; 'fastest' = fastest round over fastest naive round):")
    for name, v in per_round.items():
        target = f"target <= {targets[name]:.2f}x  {'ok' if ratios[name] <= targets[name] else 'MISSED'}" \
            if name in targets else ""
        print(f"  {name:<17} median {statistics.median(v) * 1000:7.3f} ms  fastest {min(v) * 1000:7.3f} ms   "
              f"{ratios[name]:5.3f}x naive (fastest {min(v) / min(naive):5.3f}x)   {target}")
    growth = median_ratio(per_round["ewc_separate_20"], per_round["ewc_separate_1"])
    print(f"  separate after 20 tasks / after 1: {growth:.3f}  (target <= 1.05  "
          f"{'ok' if growth <= 1.05 else 'MISSED'})")

    fisher_model, fisher_split = trainers[0].model, current.train
    if args.fisher_model != "mlp":
        torch.manual_seed(0)
        fisher_model = build_model(ModelConfig(name=args.fisher_model), input_shape=(3, 32, 32), scenario="domain",
                                   n_tasks=5, classes_per_task=10, mean=(0.5,) * 3, std=(0.25,) * 3).to(device)
        n = max(args.fisher_samples, args.loop_samples)
        fisher_split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device),
                             torch.randint(0, 10, (n,), generator=g).to(device),
                             torch.zeros(n, dtype=torch.int64, device=device))
    fisher = time_fisher(fisher_model, fisher_split, device, args.fisher_repeats, args.fisher_samples,
                         args.loop_samples)
    n_fisher = sum(p.numel() for p in fisher_model.parameters())
    print(f"\nFisher estimators on the {args.fisher_model} ({n_fisher:,} parameters), ms per 1,000 samples "
          f"(fisher_batch_size 256, {args.fisher_samples} samples; loop timed on {args.loop_samples} samples, "
          f"batched's loop on {args.fisher_samples}):")
    speedup, vmap_speedup = {}, {}
    for estimator, (fast, vmapped, slow) in fisher.items():
        speedup[estimator], vmap_speedup[estimator] = slow / fast, slow / vmapped
        if estimator == "batched":
            print(f"  {estimator:<9} {fast:9.1f} ms   minibatch loop (Avalanche) {slow:9.1f} ms   "
                  f"{speedup[estimator]:6.1f}x")
            continue
        target = f"target >= 10x  {'ok' if speedup[estimator] >= 10 else 'MISSED'}" \
            if args.fisher_model == "mlp" else ""  # the target is the MLP's; a convnet's loop is compute-bound
        print(f"  {estimator:<9} {fast:9.1f} ms (vmap only {vmapped:8.1f} ms)   per-sample loop {slow:9.1f} ms   "
              f"{speedup[estimator]:6.1f}x (vmap only {vmap_speedup[estimator]:5.1f}x)   {target}")

    result = {name: round(ratios[name], 4) for name in targets}
    result["fisher_speedup_vs_loop"] = {k: round(v, 2) for k, v in speedup.items()}
    result["fisher_vmap_speedup_vs_loop"] = {k: round(v, 2) for k, v in vmap_speedup.items() if k != "batched"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
