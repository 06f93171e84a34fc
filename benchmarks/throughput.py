"""Training throughput of `clcore.run` (strategy ``naive``) against a plain PyTorch loop.

    python benchmarks/throughput.py [--benchmark permuted_mnist|split_mnist] [--device cpu|cuda] ...

What is compared (the same work on both sides):

- the same task stream: `clcore.data.build_benchmark` builds it once on the device; both sides
  train on its tasks' training tensors, task after task, ``--epochs`` epochs each;
- the same architecture and initial weights: MLP 784-256-256 and a single (domain-IL) head. The plain
  model is an ``nn.Sequential`` of the same layers, loaded with the weights `clcore.run` starts from
  (it seeds torch with ``config.seed`` and builds the model; so do we);
- the same optimiser (SGD, same lr), batch size, batch order source (``torch.randperm`` per epoch on
  the device) and so the same number of steps and samples, last partial batch included;
- the plain loop is the strongest baseline we could write: it reads images pre-normalised to float32
  and pre-flattened (done once, outside the timing), so it does no uint8 -> float work per step,
  gathers batches with ``index_select`` (3-4x faster than ``x[idx]`` on CPU), and does no
  bookkeeping (no loss buffer, no strategy hooks, no divergence check).

Before timing, one run of each side checks that they do the same work: with the same init, batch
order and updates they end with the same weights up to float rounding (the largest difference is
printed and put in the JSON as ``max_final_weight_difference``; about 1e-8 on CPU).

What is timed: training only. `clcore.run` also evaluates before the first task and after every task;
we wrap `clcore.train.evaluate` with a timer (synchronising the device) and subtract its time from
the wall time of ``run``. Evaluation is made small as well (no validation split, 200 test samples),
so the subtraction is of a few milliseconds. Everything else inside ``run`` counts against clcore:
model and optimiser construction, per-task setup, metrics. The plain loop's timing includes loading
its initial weights and building its optimiser per task.

Method: one warm-up round (not reported), then ``--repeats`` short rounds; in each round both sides
run once, back to back, in alternating order (clcore first in even rounds). Reported: the median
wall-clock samples per second of each side, and ``ratio_vs_plain_loop`` (target >= 0.9): the median
over rounds of clcore's rate divided by the plain loop's rate in the same round. Pairing within a
round cancels slow drift in the machine's speed; the median discards rounds where a burst of other
work hit one side only. The ratio of the two medians is reported too (``ratio_of_medians``); on a
quiet machine the two agree. The last line is JSON. On CPU the limit is the plain loop itself (GEMMs
on the machine's cores).

On a machine shared with other work, wall-clock rates swing by an order of magnitude (OpenMP threads
wait on each other when a core is taken). The JSON also carries ``ratio_cpu_time``: the paired ratio
from process CPU seconds, which other processes disturb less (best with ``--threads 1``), though not
at all under heavy load (shared caches and memory bandwidth still slow each CPU second). Trust a run
on a quiet machine. On CUDA, CPU time means nothing (the host waits on the device): wall-clock only.

Data: real MNIST from ``--data-dir`` / ``$CLCORE_DATA_DIR`` / ``../shared/datasets`` when present,
else random MNIST-shaped uint8 images (throughput does not depend on pixel values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import clcore.train
from clcore.config import ExperimentConfig
from clcore.data import EXPECTED_FILES, RawData, build_benchmark, load_raw
from clcore.models import build_model

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", choices=("permuted_mnist", "split_mnist"), default="permuted_mnist")
    p.add_argument("--n-tasks", type=int, default=5)
    p.add_argument("--train-samples-per-task", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--data-dir", default=None)
    return p.parse_args(argv)


def find_mnist(data_dir: str | None) -> Path | None:
    candidates = [data_dir, os.environ.get("CLCORE_DATA_DIR"), str(REPO.parent / "shared" / "datasets")]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in EXPECTED_FILES["mnist"]):
            return Path(c)
    return None


def make_raw(config: ExperimentConfig, data_dir: str | None) -> tuple[RawData, str]:
    root = find_mnist(data_dir)
    if root is not None:
        config.benchmark.data_dir, config.benchmark.download = str(root), False
        raw, source = load_raw(config.benchmark), f"real MNIST from {root}"
    else:
        g = torch.Generator().manual_seed(0)
        raw = RawData("mnist", torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (60000,), generator=g),
                      torch.randint(0, 256, (10000, 1, 28, 28), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (10000,), generator=g))
        source = "random MNIST-shaped uint8 data (no MNIST found)"
    # A small test set: evaluation is not what we measure (and its time is subtracted anyway).
    raw.x_test, raw.y_test = raw.x_test[:200], raw.y_test[:200]
    return raw, source


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall and process-CPU seconds since construction, after synchronising the device."""

    def __init__(self, device: torch.device):
        self.device = device
        sync(device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        sync(self.device)
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


class EvalTimer:
    """Wraps `clcore.train.evaluate` and adds up the (wall, CPU) seconds it takes."""

    def __init__(self, device: torch.device):
        self.device, self.wall, self.cpu, self.original = device, 0.0, 0.0, clcore.train.evaluate

    def __enter__(self):
        def timed(*args, **kwargs):
            clock = Clock(self.device)
            out = self.original(*args, **kwargs)
            wall, cpu = clock.elapsed()
            self.wall, self.cpu = self.wall + wall, self.cpu + cpu
            return out

        clcore.train.evaluate = timed
        return self

    def __exit__(self, *exc):
        clcore.train.evaluate = self.original


def time_clcore(config: ExperimentConfig, benchmark, device: torch.device, callbacks=()) -> tuple[float, float]:
    """(wall, CPU) seconds `clcore.run` spends outside evaluation."""
    with EvalTimer(device) as eval_timer:
        clock = Clock(device)
        clcore.train.run(config, callbacks, benchmark=benchmark)
        wall, cpu = clock.elapsed()
    return wall - eval_timer.wall, cpu - eval_timer.cpu


def max_weight_difference(clcore_state: dict, plain: nn.Module) -> float:
    """Largest difference between clcore's final weights and the plain loop's (same layer order)."""
    ours = [v for k, v in clcore_state.items() if k.startswith(("backbone.", "head.linear."))]
    return max((a - b).abs().max().item() for a, b in zip(ours, plain.state_dict().values()))


def plain_model(config: ExperimentConfig, benchmark, device: torch.device) -> tuple[nn.Module, dict]:
    """An nn.Sequential with clcore's MLP layers, and clcore's initial weights for it."""
    torch.manual_seed(config.seed)  # as clcore.run does before building its model
    reference = build_model(config.model, input_shape=benchmark.input_shape, scenario=benchmark.scenario,
                            n_tasks=benchmark.n_tasks, classes_per_task=benchmark.classes_per_task,
                            mean=benchmark.mean, std=benchmark.std)
    assert reference.head.kind == "single", "the plain loop mirrors a single (domain-IL) head"
    layers = [m for m in reference.backbone.net] + [reference.head.linear]
    init = {k: v.to(device) for k, v in nn.Sequential(*layers).state_dict().items()}
    model = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else type(m)()
                            for m in layers]).to(device)
    return model, init


def time_plain(config: ExperimentConfig, model: nn.Module, init: dict, tasks: list,
               device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds a plain loop takes for the same steps: pre-normalised float inputs, nothing else."""
    cfg = config.train
    order_gen = torch.Generator(device=device).manual_seed(config.seed)
    clock = Clock(device)
    model.load_state_dict(init)
    model.train()
    for x, y in tasks:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        n = y.shape[0]
        for _ in range(cfg.epochs):
            order = torch.randperm(n, device=device, generator=order_gen)
            for s in range(0, n, cfg.batch_size):
                idx = order[s:s + cfg.batch_size]
                loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return clock.elapsed()


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    config = ExperimentConfig.from_dict({
        "benchmark": {"name": args.benchmark, "scenario": "domain", "n_tasks": args.n_tasks, "val_fraction": 0.0,
                      "train_samples_per_task": args.train_samples_per_task},
        "model": {"name": "mlp", "hidden_sizes": args.hidden},
        "strategy": {"name": "naive"},
        "train": {"optimizer": "sgd", "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
                  "device": args.device},
    })
    raw, source = make_raw(config, args.data_dir)
    benchmark = build_benchmark(config.benchmark, raw, device)
    mean, std = benchmark.mean[0], benchmark.std[0]
    tasks_float = [(((t.train.x.float() / 255.0 - mean) / std).flatten(1), t.train.y) for t in benchmark.tasks]
    model, init = plain_model(config, benchmark, device)

    samples = args.epochs * sum(len(t.train) for t in benchmark.tasks)
    steps = args.epochs * sum(-(-len(t.train) // args.batch_size) for t in benchmark.tasks)
    print(f"workload: {args.benchmark} (domain-IL), {benchmark.n_tasks} tasks, {samples} training samples, "
          f"{steps} steps of batch {args.batch_size}, MLP {benchmark.input_shape} -> {args.hidden} -> "
          f"{benchmark.classes_per_task}, SGD lr {args.lr}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"data: {source}")

    # Same work: same init, batch order (same seeded generator) and updates, so both loops end with the
    # same weights up to float rounding (they normalise inputs in a different order of operations).
    final = {}
    time_clcore(config, benchmark, device, [lambda report: final.update(report.checkpoint()["model"])])
    time_plain(config, model, init, tasks_float, device)
    difference = max_weight_difference(final, model)
    print(f"same work: final weights of the two loops differ by at most {difference:.1e}")

    rates = {"clcore": [], "plain": []}  # (wall, CPU) samples per second, one pair per round
    for r in range(args.warmup + args.repeats):
        measure = {"clcore": lambda: time_clcore(config, benchmark, device),
                   "plain": lambda: time_plain(config, model, init, tasks_float, device)}
        order = ("clcore", "plain") if r % 2 == 0 else ("plain", "clcore")
        seconds = {name: measure[name]() for name in order}
        if r < args.warmup:
            continue
        for name, (wall, cpu) in seconds.items():
            rates[name].append((samples / wall, samples / cpu))
        (cw, cc), (pw, pc) = rates["clcore"][-1], rates["plain"][-1]
        print(f"round {r - args.warmup + 1}: clcore.run {cw:8.0f} samples/s   plain loop {pw:8.0f} samples/s   "
              f"ratio {cw / pw:.3f}   (per CPU second: {cc:8.0f} vs {pc:8.0f}, ratio {cc / pc:.3f})")

    def paired_ratio(which: int) -> float:  # median over rounds of clcore / plain in the same round
        return statistics.median(c[which] / p[which] for c, p in zip(rates["clcore"], rates["plain"]))

    clcore_median = statistics.median(w for w, _ in rates["clcore"])
    plain_median = statistics.median(w for w, _ in rates["plain"])
    ratio, ratio_cpu = paired_ratio(0), paired_ratio(1)
    print(f"median: clcore.run {clcore_median:.0f} samples/s, plain loop {plain_median:.0f} samples/s; "
          f"paired ratio {ratio:.3f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}), "
          f"ratio of medians {clcore_median / plain_median:.3f}"
          + (f", per CPU second {ratio_cpu:.3f}" if device.type == "cpu" else ""))
    summary = {
        "ratio_vs_plain_loop": round(ratio, 4),
        "clcore_samples_per_s": round(clcore_median, 1),
        "plain_loop_samples_per_s": round(plain_median, 1),
        "target_ratio": 0.9,
        "ratio_of_medians": round(clcore_median / plain_median, 4),
        "ratio_cpu_time": round(ratio_cpu, 4) if device.type == "cpu" else None,
        "benchmark": args.benchmark, "device": str(device), "batch_size": args.batch_size,
        "samples_per_round": samples, "steps_per_round": steps, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(), "data": source, "max_final_weight_difference": difference,
        "clcore_samples_per_s_all": [round(w, 1) for w, _ in rates["clcore"]],
        "plain_loop_samples_per_s_all": [round(w, 1) for w, _ in rates["plain"]],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
