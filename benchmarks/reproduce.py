"""Reproduce ContinualAI's continual-learning-baselines for EWC and RWalk on real MNIST.

    python benchmarks/reproduce.py [--only ewc_permuted_mnist] [--data-dir DIR] [--set train.epochs=1]

Runs the YAML configs in ``configs/reproduce/`` (the same files ``clsweep train`` accepts) and prints
each run's average test accuracy after the last task next to the baselines' target:

    ewc_permuted_mnist   EWC, Permuted MNIST, 10 tasks          target 0.83 +- 0.03
    rwalk_split_mnist    RWalk, Split MNIST task-incremental    target 0.99 +- 0.01

The data root is ``--data-dir``, else ``$CLCORE_DATA_DIR``, else ``../shared/datasets`` next to the
repository when it holds MNIST, else ``./data`` (torchvision downloads there). The device follows the
configs (``train.device: auto``). The last line is JSON: ``[{name, value, target, tolerance}, ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import clcore
from clcore.config import ExperimentConfig, parse_override
from clcore.data import EXPECTED_FILES, load_raw
from clcore.train import resolve_device

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "reproduce"
TARGETS = {  # name: (target average test accuracy, tolerance), from continual-learning-baselines
    "ewc_permuted_mnist": (0.83, 0.03),
    "rwalk_split_mnist": (0.99, 0.01),
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
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    overrides = dict(parse_override(o) for o in args.set)

    results, raw = [], None
    for name in args.only or sorted(TARGETS):
        target, tolerance = TARGETS[name]
        config = ExperimentConfig.from_yaml(CONFIGS / f"{name}.yaml").with_overrides(
            {"benchmark.data_dir": data_dir, **overrides})
        device = resolve_device(config.train.device)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"cpu ({torch.get_num_threads()} threads)"
        if raw is None:
            raw = load_raw(config.benchmark)  # both configs read MNIST: load it once
        print(f"== {name}: {config.strategy.name} on {config.benchmark.name} ({config.benchmark.n_tasks} tasks), "
              f"device {device_name}, data {data_dir}", flush=True)
        started = time.perf_counter()
        result = clcore.run(config, [lambda r: print(
            f"  after task {r.task}: test accuracy {r.test_matrix[-1][:r.task + 1]}, "
            f"average {r.metrics['test_average_accuracy']:.4f}", flush=True)], raw=raw)
        value = result.metrics["test_average_accuracy"]
        verdict = "within tolerance" if abs(value - target) <= tolerance else "OUTSIDE tolerance"
        print(f"  {name}: average test accuracy {value:.4f}  target {target:.2f} +- {tolerance:.2f}  {verdict}  "
              f"(forgetting {result.metrics['test_forgetting']:.4f}, {time.perf_counter() - started:.0f} s on "
              f"{device_name})", flush=True)
        results.append({"name": name, "value": round(value, 4), "target": target, "tolerance": tolerance})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
