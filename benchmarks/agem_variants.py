"""Why A-GEM's rows reproduce below the paper: single runs of a row's 17-task config with one protocol
detail changed at a time (docs/results.md, the row's note).

    python benchmarks/agem_variants.py [--row agem_rwalk_permuted_mnist | agem_ewc_permuted_mnist] [--seed 1]
                                       [--only TEXT] [--data-dir DIR]

Each line: test average accuracy, forgetting, the mean accuracy on a task right after learning it (R[k][k])
and the first task's. "their init" re-initialises every Linear layer as the A-GEM code does (truncated
normal, std 0.1, biases 0.1); the rest are config overrides. A variant that diverges says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import clcore  # noqa: E402
import clcore.train  # noqa: E402
from benchmarks.reproduce import default_data_dir  # noqa: E402
from clcore import metrics as M  # noqa: E402
from clcore.config import ExperimentConfig  # noqa: E402
from clcore.data import load_raw  # noqa: E402

VARIANTS = {  # per row: label, overrides ("naive": the strategy replaced), their initialisation
    "agem_rwalk_permuted_mnist": [
        ("naive lr 0.1", "naive", False),
        ("naive lr 0.1, their init", "naive", True),
        ("rwalk lambda 1 (theirs)", {}, False),
        ("rwalk lambda 1, their init", {}, True),
        ("rwalk lambda 1, fisher_every 1", {"strategy.fisher_every": 1}, False),
        ("rwalk lambda 3", {"strategy.lambda": 3.0}, False),
        ("rwalk lambda 10", {"strategy.lambda": 10.0}, False),
        ("rwalk lambda 1, 55,000 images a task", {"benchmark.train_samples_per_task": 55000}, False),
    ],
    "agem_ewc_permuted_mnist": [
        ("naive lr 0.03", "naive", False),
        ("naive lr 0.03, their init", "naive", True),
        ("ewc++ lambda 10 (theirs)", {}, False),
        ("ewc++ lambda 10, their init", {}, True),
        ("ewc++ lambda 1", {"strategy.lambda": 1.0}, False),
        ("ewc++ lambda 10, 55,000 images a task", {"benchmark.train_samples_per_task": 55000}, False),
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", choices=list(VARIANTS), default="agem_rwalk_permuted_mnist")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="", help="run the variants whose label holds this text")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    base = ExperimentConfig.from_yaml(ROOT / "configs" / "reproduce" / f"{args.row}.yaml").with_overrides(
        {"benchmark.data_dir": args.data_dir or default_data_dir(), "seed": args.seed, "benchmark.seed": args.seed})
    raw = load_raw(base.benchmark)
    build = clcore.train.build_model

    def their_init(*a, **k):
        model = build(*a, **k)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
                    torch.nn.init.constant_(m.bias, 0.1)
        return model

    for label, overrides, init in (v for v in VARIANTS[args.row] if args.only in v[0]):
        config = ExperimentConfig.from_dict({**base.to_dict(), "strategy": {"name": "naive"}}) \
            if overrides == "naive" else base.with_overrides(overrides)
        clcore.train.build_model = their_init if init else build
        started = time.perf_counter()
        try:
            R = clcore.run(config, raw=raw).test_matrix
        except clcore.train.TrainingDivergedError as error:
            print(f"{label:36s} diverged: {error}", flush=True)
            continue
        finally:
            clcore.train.build_model = build
        d = [R[k][k] for k in range(len(R))]
        print(f"{label:36s} average {M.average_accuracy(R):.4f}  F {M.forgetting(R):.4f}  "
              f"R[k][k] {sum(d) / len(d):.4f}  first task {d[0]:.4f}  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
