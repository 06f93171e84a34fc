"""What reusing trial actors buys: the same sweep with Ray Tune's ``reuse_actors`` on and off.

    .venv/bin/python benchmarks/actor_reuse.py [--spec search_spaces/quickstart.yaml] [--repeats 2]
                                               [--set key=value ...]

Actors are reused on a local instance and not on a cluster the driver joins
(``sweeps.runner.reuse_actors``): there a reused actor can be a lost node's, and a new trial handed
it fails without a retry (docs/cluster.md, "Lost nodes and failed trials"). This measures what not
reusing costs. Per repeat, the sweep file runs once with reuse on and once with it off (the order
alternates between repeats), each on a fresh local Ray of ``--num-cpus`` CPUs, without MLflow.
Printed per run: the driver's wall time, the trials, and the median trial wall time (start to end on
the driver); then the ratio of the summed wall times (off / on). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps.spec import load_spec  # noqa: E402


def run_once(spec_file: str, overrides: list[str], reuse: bool, num_cpus: int, folder: Path) -> dict:
    from sweeps import runner

    name = f"reuse_{'on' if reuse else 'off'}_{int(time.time() * 1000)}"
    spec = load_spec(spec_file, [*overrides, f"name={name}", f"storage.path={folder}", "tracking.mlflow=false"])
    runner.REUSE_ACTORS = reuse
    started = time.perf_counter()
    state = runner.run_sweep(spec, num_cpus=num_cpus, tracking=runner.Tracking(), verbose=0)
    wall = time.perf_counter() - started
    trial_walls = [t.wall_seconds for t in state.trials if t.wall_seconds is not None]
    return {"reuse_actors": reuse, "wall_s": round(wall, 1), "trials": len(state.trials),
            "median_trial_s": round(statistics.median(trial_walls), 2) if trial_walls else None,
            "counts": {str(k): v for k, v in state.counts().items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="clsweep-reuse-"))
    runs = []
    try:
        for repeat in range(args.repeats):
            for reuse in ((True, False) if repeat % 2 == 0 else (False, True)):  # alternate the order
                run = run_once(args.spec, args.set, reuse, args.num_cpus, folder)
                runs.append(run)
                print(f"repeat {repeat}, reuse_actors={reuse}: {run['wall_s']:.1f} s for {run['trials']} trials "
                      f"({run['counts']}), median trial {run['median_trial_s']} s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    on = sum(r["wall_s"] for r in runs if r["reuse_actors"])
    off = sum(r["wall_s"] for r in runs if not r["reuse_actors"])
    print(f"reuse off / on: {off:.1f} s / {on:.1f} s = {off / on:.3f}")
    print(json.dumps({"spec": args.spec, "off_over_on": round(off / on, 3), "runs": runs}))


if __name__ == "__main__":
    main()
