"""Selection protocols against end-of-training tuning, on real MNIST: ``clsweep compare`` per benchmark.

    .venv/bin/python benchmarks/protocols.py [--cases ewc_split_mnist_task,...] [--protocols ...]
                                             [--seeds 3] [--trials 16] [--full] [--keep DIR]

For each case (EWC and RWalk on Split MNIST, task- and domain-IL, and EWC on Permuted MNIST with 5
tasks: the shipped sweep files), one `sweeps.compare.run_compare` over the protocols
(default: end_of_training, prefix:2, prefix:2:rest, two_phase, per_task, chf). ``two_phase`` stands for
each case's own: tuned on Split Fashion-MNIST for the Split MNIST cases, on other permutations
(``seed=1``) for Permuted MNIST; ``chf`` for each case's start (`CASES`), its lr grid 5 points over the
file's ``train.lr`` range. Each protocol's chosen values then train on the same ``--seeds`` fresh seeds. By default the sweeps are made small enough for 2 CPU cores:

- 2,000 training samples per task, one epoch, MLP 256-256;
- 500 Fisher samples for EWC;
- ``--trials`` trials, with each file's own search algorithm and scheduler.

The output says so. ``--full`` keeps the files' own sizes and trial counts.

Printed per case: the compare table, the Markdown that ``docs/protocols.md`` quotes. Its columns are
the test average accuracy, forgetting and lowest accuracy right after learning (mean ± std over the
seeds), the difference from end-of-training, and the tasks trained in every phase as a ratio to
end-of-training. The last line is JSON: per case and protocol, ``mean``, ``std``, ``delta`` and
``compute_ratio``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps.compare import markdown, run_compare  # noqa: E402

# case: (sweep file, overrides, its two_phase: the stream tuned on instead of the target, its chf: the
# lambda the stability decay starts from, 100 times the file's first point, so that 10 halvings reach
# below it)
CASES = {
    "ewc_split_mnist_task": ("ewc_split_mnist_task.yaml", [], "two_phase:name=split_fashion_mnist", "chf:1e6"),
    "ewc_split_mnist_domain": ("ewc_split_mnist_domain.yaml", [], "two_phase:name=split_fashion_mnist", "chf:1e6"),
    "rwalk_split_mnist_task": ("rwalk_split_mnist_task.yaml", [], "two_phase:name=split_fashion_mnist", "chf:100"),
    "rwalk_split_mnist_domain": ("rwalk_split_mnist_domain.yaml", [], "two_phase:name=split_fashion_mnist",
                                 "chf:100"),
    "ewc_permuted_mnist_5": ("ewc_separate_permuted_mnist.yaml", ["benchmark.n_tasks=5"], "two_phase:seed=1",
                             "chf:1e5"),
}
SMALL = ["benchmark.train_samples_per_task=2000", "train.epochs=1", "model.hidden_sizes=[256, 256]"]
SMALL_EWC = ["strategy.fisher_samples=500"]
ALWAYS = ["tracking.mlflow=false", "resources.cpu=1", "algorithm.max_concurrent=null"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--protocols", default="end_of_training,prefix:2,prefix:2:rest,two_phase,per_task,chf",
                        help="clsweep compare tokens; two_phase and chf: each case's own (CASES)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16, help="trials per sweep (not with --full)")
    parser.add_argument("--full", action="store_true", help="the sweep files' own sizes and trial counts")
    parser.add_argument("--keep", metavar="DIR", help="keep the sweeps here (default: a temporary folder)")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; allowed: {', '.join(CASES)}")
    tokens = [t.strip() for t in args.protocols.split(",") if t.strip()]
    size = "the sweep files' own sizes" if args.full else (
        f"reduced: {args.trials} trials per sweep, " + ", ".join(SMALL + SMALL_EWC) + " (EWC)")
    print(f"protocols {', '.join(tokens)}; {args.seeds} fresh seeds per choice; {size}", flush=True)

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="clsweep-protocols-") as tmp:
        storage = Path(args.keep).resolve() if args.keep else Path(tmp)
        for case in cases:
            file, extra, two_phase, chf = CASES[case]
            overrides = [*extra, *ALWAYS, f"storage.path={storage}", f"name={case}"]
            if not args.full:
                overrides += [*SMALL, f"algorithm.num_samples={args.trials}"]
                overrides += SMALL_EWC if case.startswith("ewc") else []
            started = time.perf_counter()
            case_tokens = [{"two_phase": two_phase, "chf": chf}.get(t, t) for t in tokens]
            rows, _ = run_compare(ROOT / "search_spaces" / file, case_tokens, args.seeds, overrides, verbose=0)
            print(f"\n## {case} ({time.perf_counter() - started:.0f} s)\n", flush=True)
            print(markdown(rows), flush=True)
            out[case] = {r["protocol"]: {"mean": r["test_average_accuracy"], "std": r["test_average_accuracy_std"],
                                         "delta": r["delta_average_accuracy"], "compute_ratio": r["compute_ratio"],
                                         "lowest_right_after_learning": r["test_min_accuracy_current_task"]}
                         for r in rows}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
