"""The sweep service: its per-trial overhead, and Optuna + ASHA against random search.

    .venv/bin/python benchmarks/sweep.py [--spec search_spaces/ewc_split_mnist_task.yaml] [--trials 24]
                                         [--set key=value ...] [--keep]

Two sweeps of the same sweep file, with the same number of trials, on one local Ray instance:

- ``optuna+asha``: Optuna's TPE, with ASHA keeping the top quarter of the trials after task 1 and
  again after task 4 (grace period 1, reduction factor 4, one bracket). On five tasks the
  expected compute of this schedule is ~36% of running every trial to the end, but asynchronous
  ASHA also lets through every trial that beats all earlier ones at a rung, and TPE's later
  trials often do: measured fractions are 42-44% (a single cut after task 1, reduction factor 5,
  gave 39% and 45% in two runs);
- ``random``: random search (fixed seed) without early stopping: every trial sees every task.

Defaults make it a few minutes on a 2-core CPU: EWC on Split MNIST (task-incremental, real MNIST
from ``$CLCORE_DATA_DIR``, downloaded when missing) with 2,000 training samples per task, one
epoch per task, Adam.

Printed: per arm the best validation average accuracy over the trials that saw every task, the
compute (epochs trained, summed over all trials, stopped ones included) and the wall time; the
service's per-trial overhead (the driver's wall time of a trial, from its start to its end, minus
the time spent inside ``clcore.run``; median over both arms). Targets: overhead under 2 s per
trial; Optuna + ASHA within 0.5 points of random search's best with at most 40% of its compute.
The last line is JSON: ``trial_overhead_s``, ``asha_best``, ``random_best``,
``asha_compute_fraction`` (plus the raw numbers behind them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps.spec import load_spec  # noqa: E402

# The Split MNIST sweep, made small enough for a laptop CPU (both arms get the same).
SMALL = ["benchmark.train_samples_per_task=2000", "train.epochs=1", "strategy.fisher_samples=500",
         "model.hidden_sizes=[256, 256]", "resources.cpu=1", "max_failures=0"]
ARMS = {
    "optuna+asha": ["algorithm.name=optuna", "scheduler={name: asha, grace_period: 1, reduction_factor: 4, brackets: 1}"],
    "random": ["algorithm.name=random", "scheduler=fifo"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "ewc_split_mnist_task.yaml"))
    parser.add_argument("--trials", type=int, default=24, help="trials per arm (default 24)")
    parser.add_argument("--concurrent", type=int, default=os.cpu_count() or 2,
                        help="trials at once (default: one per CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides for both arms, e.g. benchmark.scenario=domain")
    parser.add_argument("--keep", action="store_true", help="keep the sweeps' storage (printed) instead of deleting it")
    args = parser.parse_args(argv)

    storage = Path(tempfile.mkdtemp(prefix="clsweep-bench-"))
    common = [*SMALL, f"algorithm.num_samples={args.trials}", f"algorithm.max_concurrent={args.concurrent}",
              f"storage.path={storage}", *args.set]
    specs = {arm: load_spec(args.spec, [*common, *extra, f"name=bench_{arm.replace('+', '_')}"])
             for arm, extra in ARMS.items()}  # both validated before Ray starts

    from sweeps.runner import init_ray, run_sweep

    init_ray(num_cpus=os.cpu_count())
    base = specs["random"].example_config()
    print(f"sweep benchmark: {Path(args.spec).name} ({base.benchmark.name}, {base.benchmark.scenario}-incremental, "
          f"{base.benchmark.n_tasks} tasks, strategy {base.strategy.name}); {args.trials} trials per arm, "
          f"{args.concurrent} at once; search over {', '.join(specs['random'].search)}")
    print(f"overrides for both arms: {' '.join(common)}", flush=True)

    results, overheads = {}, []
    for arm, spec in specs.items():
        started = time.perf_counter()
        state = run_sweep(spec, verbose=0)
        wall = time.perf_counter() - started
        best = state.best()
        results[arm] = {
            "best": best.last[spec.objective.metric] if best else float("nan"),
            "best_params": best.params if best else None,
            "epochs": sum(t.epochs_trained for t in state.trials),
            "wall_s": wall, "counts": state.counts()}
        overheads += [t.wall_seconds - t.last["clcore_seconds"] for t in state.trials
                      if t.wall_seconds is not None and "clcore_seconds" in t.last]
        print(f"  {arm:12s} {len(state.trials)} trials {state.counts()}: best {spec.objective.metric} "
              f"{results[arm]['best']:.4f}, {results[arm]['epochs']} epochs trained, {wall:.0f}s", flush=True)

    asha, random = results["optuna+asha"], results["random"]
    overhead = statistics.median(overheads)
    fraction = asha["epochs"] / random["epochs"]
    gap = 100 * (asha["best"] - random["best"])
    print(f"per-trial overhead (driver wall time - time in clcore.run), median of {len(overheads)} trials: "
          f"{overhead:.2f} s (target < 2 s)")
    print(f"Optuna+ASHA best {100 * asha['best']:.2f} vs random search {100 * random['best']:.2f}: "
          f"{gap:+.2f} points (target >= -0.5), with {100 * fraction:.1f}% of its compute "
          f"({asha['epochs']} vs {random['epochs']} epochs; target <= 40%)")
    if args.keep:
        print(f"storage kept: {storage}")
    else:
        shutil.rmtree(storage, ignore_errors=True)
    print(json.dumps({"trial_overhead_s": round(overhead, 3), "asha_best": round(asha["best"], 4),
                      "random_best": round(random["best"], 4), "asha_compute_fraction": round(fraction, 3),
                      "asha_epochs": asha["epochs"], "random_epochs": random["epochs"],
                      "asha_wall_s": round(asha["wall_s"], 1), "random_wall_s": round(random["wall_s"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
