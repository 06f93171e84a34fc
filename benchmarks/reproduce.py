"""Reproduce published continual-learning results on real MNIST, with each paper's protocol and hyperparameters.

    python benchmarks/reproduce.py [--only NAME]... [--seeds 5] [--data-dir DIR] [--set train.epochs=1]

Runs the YAML configs in ``configs/reproduce/`` (the same files ``clsweep train`` accepts; each one's
comment gives the source and how its hyperparameters map to ours) and prints each run's average test
accuracy after the last task next to the published target (`TARGETS`):

    ewc_permuted_mnist                      continual-learning-baselines   0.83 +- 0.03
    rwalk_split_mnist                       continual-learning-baselines   0.99 +- 0.01
    vandeven_{ewc,online_ewc}_split_mnist_{task,domain,class}
                                            van de Ven & Tolias 2019       a mean, within 0.01
    agem_ewc_permuted_mnist                 Chaudhry et al. 2019 (A-GEM)   0.683 +- 0.0069 (two stds)
    agem_rwalk_permuted_mnist               Chaudhry et al. 2019 (A-GEM)   0.857 +- 0.0056 (two stds)

The data root is ``--data-dir``, else ``$CLCORE_DATA_DIR``, else ``../shared/datasets`` next to the
repository when it holds MNIST, else ``./data`` (torchvision downloads there). The device follows the
configs (``train.device: auto``). ``--seeds N`` runs seeds 0..N-1 of each config and reports their mean
(one run's result moves by a few tenths of a point with the seed: RWalk on Split MNIST gave 0.989-0.996
over four seeds); where the paper draws its benchmark per seed (van de Ven's class order), the seed sets
``benchmark.seed`` too. The last line is JSON: ``[{name, value, target, tolerance, forgetting, seconds},
...]`` (``forgetting``: the mean test forgetting; ``seconds``: all seeds' runs; plus ``seeds`` and ``std``
with more than one seed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import clcore
from clcore.config import ExperimentConfig, parse_override
from clcore.data import EXPECTED_FILES, load_raw
from clcore.train import resolve_device

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "reproduce"
VAN_DE_VEN = "van de Ven & Tolias 2019, Split MNIST"
A_GEM = "A-GEM's Permuted MNIST, the 17 tasks after its 3 tuning tasks"
# name: (what, target average test accuracy, tolerance, whether a seed also draws the benchmark)
TARGETS = {
    # continual-learning-baselines (ContinualAI): target and tolerance as they state them; the benchmark's
    # permutations and class order stay those of benchmark.seed
    "ewc_permuted_mnist": ("EWC, Permuted MNIST, 10 tasks", 0.83, 0.03, False),
    "rwalk_split_mnist": ("RWalk, Split MNIST task-incremental", 0.99, 0.01, False),
    # van de Ven & Tolias 2019 (arXiv 1904.07734): a mean only, so within 1 point; their class order is
    # drawn per seed, so each seed here draws it too (benchmark.seed = seed)
    "vandeven_ewc_split_mnist_task": (f"EWC, {VAN_DE_VEN}, task-IL", 0.986, 0.01, True),
    "vandeven_ewc_split_mnist_domain": (f"EWC, {VAN_DE_VEN}, domain-IL", 0.640, 0.01, True),
    "vandeven_ewc_split_mnist_class": (f"EWC, {VAN_DE_VEN}, class-IL", 0.200, 0.01, True),
    "vandeven_online_ewc_split_mnist_task": (f"online EWC, {VAN_DE_VEN}, task-IL", 0.991, 0.01, True),
    "vandeven_online_ewc_split_mnist_domain": (f"online EWC, {VAN_DE_VEN}, domain-IL", 0.643, 0.01, True),
    "vandeven_online_ewc_split_mnist_class": (f"online EWC, {VAN_DE_VEN}, class-IL", 0.200, 0.01, True),
    # Chaudhry et al. 2019 (A-GEM, ICLR), Table 1, mean +- std over 5 runs: within two stds; each run draws
    # its permutations (np.random.seed(random_seed + run) in their code), so each seed here draws them too
    "agem_ewc_permuted_mnist": (f"EWC (EWC++), {A_GEM}", 0.683, 2 * 0.0069, True),
    "agem_rwalk_permuted_mnist": (f"RWalk, {A_GEM}", 0.857, 2 * 0.0056, True),
}


def default_data_dir() -> str:
    if os.environ.get("CLCORE_DATA_DIR"):
        return os.environ["CLCORE_DATA_DIR"]
    shared = REPO.parent / "shared" / "datasets"
    if all((shared / f).is_file() for f in EXPECTED_FILES["mnist"]):
        return str(shared)
    return "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(TARGETS), help="run only this config (repeatable)")
    parser.add_argument("--data-dir", default=None, help="data root holding MNIST/raw (default: see above)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of every config, e.g. train.epochs=1 (a smoke run)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per config, seeds 0..N-1; the mean is reported")
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    overrides = dict(parse_override(o) for o in args.set)

    results, raw = [], None
    for name in args.only or sorted(TARGETS):
        _, target, tolerance, draws_benchmark = TARGETS[name]
        config = ExperimentConfig.from_yaml(CONFIGS / f"{name}.yaml").with_overrides(
            {"benchmark.data_dir": data_dir, **overrides})
        device = resolve_device(config.train.device)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"cpu ({torch.get_num_threads()} threads)"
        if raw is None:
            raw = load_raw(config.benchmark)  # both configs read MNIST: load it once
        values, forgetting, seconds = [], [], 0.0
        for seed in range(args.seeds) if args.seeds > 1 else [config.seed]:
            print(f"== {name}: {config.strategy.name} on {config.benchmark.name} ({config.benchmark.n_tasks} tasks), "
                  f"seed {seed}, device {device_name}, data {data_dir}", flush=True)
            started = time.perf_counter()
            seeds = {"seed": seed, **({"benchmark.seed": seed} if draws_benchmark else {})}
            result = clcore.run(config.with_overrides(seeds), [lambda r: print(
                f"  after task {r.task}: test accuracy {r.test_matrix[-1][:r.task + 1]}, "
                f"average {r.metrics['test_average_accuracy']:.4f}", flush=True)], raw=raw)
            values.append(result.metrics["test_average_accuracy"])
            forgetting.append(result.metrics["test_forgetting"])
            seconds += time.perf_counter() - started
            print(f"  seed {seed}: average test accuracy {values[-1]:.4f} (forgetting "
                  f"{forgetting[-1]:.4f}, {time.perf_counter() - started:.0f} s)", flush=True)
        value = statistics.mean(values)
        verdict = "within tolerance" if abs(value - target) <= tolerance else "OUTSIDE tolerance"
        spread = f" (mean of {len(values)} seeds, std {statistics.stdev(values):.4f})" if len(values) > 1 else ""
        print(f"  {name}: average test accuracy {value:.4f}{spread}  target {target:.3f} +- {tolerance:.3f}  "
              f"{verdict}  on {device_name}", flush=True)
        results.append({"name": name, "value": round(value, 4), "target": target, "tolerance": tolerance,
                        "forgetting": round(statistics.mean(forgetting), 4), "seconds": round(seconds)})
        if len(values) > 1:
            results[-1].update(seeds=len(values), std=round(statistics.stdev(values), 4))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
