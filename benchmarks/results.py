"""The tuned-baselines table: published results reproduced with the paper's protocol, then tuned by clsweep.

    python benchmarks/results.py --row NAME [--row NAME]... [--seeds 5] [--data-dir DIR] [--keep DIR]
    python benchmarks/results.py --row NAME --realistic   # only the realistic cell of a measured row
    python benchmarks/results.py --write          # docs/results.md from benchmarks/results/*.json alone

Each row (`ROWS`) is a published number, the config that reproduces it (``configs/reproduce/NAME.yaml``,
the paper's protocol and hyperparameters) and, where there is one, a sweep over the same protocol
(``search_spaces/NAME.yaml``). ``--row NAME`` measures, all on the same evaluation seeds 1..N (``--seeds``;
each seed also draws the benchmark where the paper does, van de Ven's class order):

- **reproduced**: the reproduce config as it is;
- **tuned**: the sweep (selection on the validation split under the sweep file's protocol: end of training,
  or A-GEM's own for its rows; the search trains with seed 0
  and benchmark.seed 0, so the evaluation seeds are fresh), its best values put into the reproduce config;
- **naive, tuned**: the same sweep with the strategy replaced by ``naive``, searching only the
  hyperparameters the two share (``train.*``) with the same number of trials, scheduler and search seed
  (`naive_baseline`); its best values likewise. A gain of the tuned regulariser over the paper's values
  that the tuned naive run also shows came from the shared hyperparameters, not the regulariser;
- **tuned, realistic**: the same sweep under a realistic selection protocol (``Row.realistic``, a `clsweep
  compare` token: ``prefix:2``, tune on the first two tasks alone, for the 5-task rows), its choice trained
  like the others. Rows whose sweep already uses its paper's protocol (A-GEM's: tune on 3 tasks, report the
  other 17) say so instead. ``--realistic`` measures this cell alone for rows already measured.

Each cell: test average accuracy (mean +- std over the seeds), forgetting, the accuracy on each task right
after learning it (mean over tasks, and the lowest), and intransigence against the tuned naive run of the
same seed (``a*_k`` = its accuracy on task k right after learning it: how much plasticity the regulariser
cost). Cost: the sweeps' trials and task trainings, and every phase's seconds on this machine.

``--row`` writes ``benchmarks/results/NAME.json`` and regenerates ``docs/results.md`` from every JSON file
there (a row's ``note``, an explanation written into its JSON file, is kept when it is measured again);
``--keep DIR`` keeps the sweeps' folders (and reuses finished ones). ``--set KEY=VALUE`` (a config field,
fixed in every run and sweep) and ``--trials N`` make a smoke run, printed and not written:

    python benchmarks/results.py --row vandeven_ewc_split_mnist_domain --seeds 2 --trials 2 \
        --set train.steps_per_task=20 --set benchmark.train_samples_per_task=500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reproduce import TARGETS, default_data_dir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"
VAN_DE_VEN_CODE = ("GMvandeVen/continual-learning, param_values.py of 2019-2021; 2,000 iterations per task, "
                   "Adam lr 0.001 carried across tasks, batch 128, MLP 784-400-400, pixels in [0, 1], Fisher at "
                   "argmax labels")

# the realistic column of the 5-task rows: tune on the first 2 tasks alone, then train the whole stream (Lee
# et al. 2024's first-task protocol with the smallest prefix on which every searched parameter acts: a
# penalty has no effect on task 0)
REALISTIC = "prefix:2"
A_GEM_CODE = ("facebookresearch/agem, replicate_results_iclr19.sh; Permuted MNIST, 20 tasks: tuned on the first 3, "
              "the other 17 trained and reported; 1,000 images per task seen once, batch 10, SGD, MLP 784-256-256")


@dataclass(frozen=True)
class Row:
    published: float             # average test accuracy, as a fraction
    published_std: Optional[float]  # None: the paper gives a mean only (or its spread is not stated here)
    source: str
    sweep: bool                  # whether search_spaces/NAME.yaml tunes this row
    # a realistic selection protocol (a `clsweep compare` token) the sweep also runs under, for the
    # "tuned, realistic" column; None where there is no sweep or the sweep's own protocol already is one
    realistic: Optional[str] = None


ROWS = {
    "ewc_permuted_mnist": Row(0.83, 0.03, "continual-learning-baselines (ContinualAI), EWC on Permuted MNIST; "
                                          "10 tasks, 10 epochs per task, SGD lr 0.001, batch 256, MLP 784-512, "
                                          "Avalanche's batched Fisher grouped by class (lambda 2 = their ewc_lambda 1)",
                              True, REALISTIC),
    "rwalk_split_mnist": Row(0.99, 0.01, "continual-learning-baselines (ContinualAI), RWalk on Split MNIST task-IL; "
                                         "classes in order 0..9, 10 epochs per task, Adam lr 0.001, batch 64, "
                                         "multi-head MLP 784-256-256", True, REALISTIC),
    **{f"vandeven_{method}_split_mnist_{scenario}": Row(
        TARGETS[f"vandeven_{method}_split_mnist_{scenario}"][1], None,
        f"van de Ven & Tolias 2019 (arXiv 1904.07734), {label} on Split MNIST {scenario}-IL; {VAN_DE_VEN_CODE}", True,
        REALISTIC)
       for method, label in (("ewc", "EWC"), ("online_ewc", "online EWC"))
       for scenario in ("task", "domain", "class")},
    "agem_ewc_permuted_mnist": Row(0.683, 0.0069, f"Chaudhry et al. 2019 (A-GEM, ICLR), Table 1, EWC; {A_GEM_CODE}; "
                                                  f"their EWC is EWC++ (strategy ewcpp), lambda 10, lr 0.03", True),
    "agem_rwalk_permuted_mnist": Row(0.857, 0.0056, f"Chaudhry et al. 2019 (A-GEM, ICLR), Table 1, RWalk; {A_GEM_CODE}; "
                                                    f"lambda 1, lr 0.1, score_clip interval", True),
}


def naive_baseline(sweep: dict) -> dict:
    """The naive baseline of a sweep file's mapping on the same budget: the strategy replaced by
    ``naive``, only the searched keys the two share (``train.*``) kept, in the search and in its
    starting points; trials, scheduler, search seed and everything else as they are. Its name is a
    digest of that mapping: two sweeps with the same baseline (EWC and online EWC on one protocol)
    name the same sweep, which ``--keep`` then runs once."""
    data = json.loads(json.dumps(sweep))  # a deep copy
    data["base"]["strategy"] = {"name": "naive"}
    data["search"] = {k: v for k, v in sweep["search"].items() if k.startswith("train.")}
    if not data["search"]:
        raise ValueError(f"{sweep['name']} searches no train.* key: a naive baseline would have nothing to tune")
    algorithm = data.get("algorithm", {})
    if algorithm.get("points_to_evaluate"):
        points = [{k: v for k, v in p.items() if k in data["search"]} for p in algorithm["points_to_evaluate"]]
        algorithm["points_to_evaluate"] = [p for i, p in enumerate(points) if p and p not in points[:i]]
    # named by what it runs, so the regularisers of one protocol (EWC, online EWC) share one baseline
    data.pop("name"), data.pop("description", None)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    return {"name": f"naive_{digest}", "description": f"naive, tuned like {sweep['name']} over the "
                                                        f"hyperparameters they share", **data}


def _sweep_best(data: dict, storage: Path, overrides: dict) -> tuple[dict, dict]:
    """Run (or read back) one sweep, with ``overrides`` (``--set`` pairs); its best trial's searched
    values and its cost."""
    from sweeps import runner
    from sweeps.compare import SAME_SWEEP
    from sweeps.spec import SweepSpec
    from sweeps.storage import SPEC_FILE, SUMMARY_FILE, load_sweep

    spec = SweepSpec.from_dict(data, source=data["name"], overrides={
        "storage.path": str(storage), "tracking.mlflow": False, **overrides})
    folder = spec.experiment_path
    stored = folder / SPEC_FILE
    changed = [k for k in SAME_SWEEP
               if stored.exists() and getattr(SweepSpec.from_yaml(stored), k) != getattr(spec, k)]
    if changed:
        raise FileExistsError(f"{folder} holds this sweep with other {', '.join(changed)}: remove it, or --keep "
                              f"another folder")
    started = time.perf_counter()
    if (folder / SUMMARY_FILE).exists() and all(t.outcome.ended for t in load_sweep(folder).trials):
        state = load_sweep(folder)
    else:
        with runner.ray_session():
            state = runner.resume_sweep(folder) if (folder / SPEC_FILE).exists() else runner.run_sweep(spec, verbose=0)
    best = state.best()
    if best is None:
        raise RuntimeError(f"sweep {spec.name}: no trial completed; see {folder}")
    values = {k: v for k, v in state.trial_config(best).flat().items() if k in spec.search}
    seconds = state.wall_seconds or time.perf_counter() - started  # a kept sweep's: the run that ended it
    spent = state.cost()
    cost = {"name": spec.name, "selection": spec.protocol_description, "trials": len(state.trials),
            "task_trainings": spent["task_trainings"], "clcore_seconds": round(spent["clcore_seconds"]), "seconds": round(seconds),
            "best_val_average_accuracy": round(best.last[spec.objective.metric], 4),
            "outcomes": {str(getattr(k, "value", k)): n for k, n in state.counts().items()}}
    return values, cost


def _evaluate(config, draws_benchmark: bool, seeds: list[int], raw, label: str, values: dict,
              naive_diagonals: Optional[list[list[float]]] = None) -> dict:
    """``config`` with ``values`` on each seed: the cell's figures, and each seed's R[k][k]."""
    import clcore
    from clcore import metrics as M

    config = config.with_overrides(values)
    runs, started = [], time.perf_counter()
    for i, seed in enumerate(seeds):
        result = clcore.run(config.with_overrides({"seed": seed, **({"benchmark.seed": seed} if draws_benchmark
                                                                     else {})}), raw=raw)
        R = result.test_matrix
        diagonal = [R[k][k] for k in range(len(R))]
        runs.append({"seed": seed, "average_accuracy": M.average_accuracy(R), "forgetting": M.forgetting(R),
                     "accuracy_right_after_learning": statistics.mean(diagonal),
                     "lowest_right_after_learning": min(diagonal), "diagonal": diagonal})
        if naive_diagonals is not None:
            runs[-1]["intransigence_vs_naive"] = M.intransigence(R, naive_diagonals[i])
        print(f"  {label} seed {seed}: average test accuracy {runs[-1]['average_accuracy']:.4f}", flush=True)
    cell = {"values": values, "seeds": seeds, "seconds": round(time.perf_counter() - started)}
    for key in FIGURES:
        if key in runs[0]:
            xs = [r[key] for r in runs]
            cell[key] = {"mean": round(statistics.mean(xs), 4),
                         "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else None}
    cell["runs"] = runs
    return cell


FIGURES = ("average_accuracy", "forgetting", "accuracy_right_after_learning", "lowest_right_after_learning",
           "intransigence_vs_naive")


def measure(name: str, seeds: list[int], storage: Path, fixed: dict, trials: Optional[int] = None) -> dict:
    """One row: the tuned naive baseline first (the others' intransigence is measured against it), then
    the reproduction, then the tuned regulariser."""
    from clcore.config import ExperimentConfig
    from clcore.data import load_raw

    row = ROWS[name]
    config = ExperimentConfig.from_yaml(ROOT / "configs" / "reproduce" / f"{name}.yaml").with_overrides(fixed)
    sweep_overrides = {**fixed, **({"algorithm.num_samples": trials} if trials else {})}
    draws_benchmark = TARGETS[name][3]
    raw = load_raw(config.benchmark)
    out = {"name": name, "published": row.published, "published_std": row.published_std, "source": row.source,
           "machine": f"{os.cpu_count()} CPUs", "command": f"python benchmarks/results.py --row {name} "
                                                          f"--seeds {len(seeds)}"}
    naive_diagonals = None
    if row.sweep:
        sweep = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
        naive_values, out["naive_sweep"] = _sweep_best(naive_baseline(sweep), storage, sweep_overrides)
        naive = ExperimentConfig.from_dict({**config.to_dict(), "strategy": {"name": "naive"}})
        out["naive_tuned"] = _evaluate(naive, draws_benchmark, seeds, raw, "naive, tuned", naive_values)
        naive_diagonals = [r["diagonal"] for r in out["naive_tuned"]["runs"]]
    out["reproduced"] = _evaluate(config, draws_benchmark, seeds, raw, "reproduced", {}, naive_diagonals)
    if row.sweep:
        values, out["sweep"] = _sweep_best(sweep, storage, sweep_overrides)
        out["tuned"] = _evaluate(config, draws_benchmark, seeds, raw, "tuned", values, naive_diagonals)
    if row.realistic:
        out.update(measure_realistic(name, seeds, storage, fixed, trials, naive_diagonals, raw))
    return out


def realistic_only(name: str, seeds: list[int], storage: Path, fixed: dict, trials: Optional[int] = None) -> dict:
    """A measured row with its realistic cell (re)measured, every other cell kept as written."""
    path = RESULTS / f"{name}.json"
    if not ROWS[name].realistic:
        raise SystemExit(f"--realistic: row {name} has no realistic protocol (ROWS[{name!r}].realistic)")
    if not path.exists():
        raise SystemExit(f"--realistic: {path} does not exist: measure the row first (--row {name})")
    row = json.loads(path.read_text())
    if row["naive_tuned"]["seeds"] != seeds:
        raise SystemExit(f"--realistic: {name} was measured on seeds {row['naive_tuned']['seeds']}, not {seeds}: "
                         f"give --seeds {len(row['naive_tuned']['seeds'])}")
    diagonals = [r["diagonal"] for r in row["naive_tuned"]["runs"]]
    return {**row, **measure_realistic(name, seeds, storage, fixed, trials, diagonals)}


def realistic_sweep(name: str) -> dict:
    """Row ``name``'s sweep file under its realistic protocol, named as `clsweep compare` names it
    (``<name>-prefix2``); the search, budget and everything else as the file has them."""
    from sweeps.compare import protocol_section, protocol_sweep_name

    token = ROWS[name].realistic
    sweep = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    return {**sweep, "name": protocol_sweep_name(sweep["name"], token), "protocol": protocol_section(token, seeds=1)}


def measure_realistic(name: str, seeds: list[int], storage: Path, fixed: dict, trials: Optional[int] = None,
                      naive_diagonals: Optional[list[list[float]]] = None, raw=None) -> dict:
    """The "tuned, realistic" cell: the row's sweep under ``ROWS[name].realistic`` (named as `clsweep compare`
    names it), its choice trained on the evaluation seeds like the other cells."""
    from clcore.config import ExperimentConfig
    from clcore.data import load_raw

    config = ExperimentConfig.from_yaml(ROOT / "configs" / "reproduce" / f"{name}.yaml").with_overrides(fixed)
    overrides = {**fixed, **({"algorithm.num_samples": trials} if trials else {})}
    values, cost = _sweep_best(realistic_sweep(name), storage, overrides)
    cell = _evaluate(config, TARGETS[name][3], seeds, raw or load_raw(config.benchmark), "tuned, realistic", values,
                     naive_diagonals)
    return {"realistic_sweep": cost, "realistic": cell}


# ----------------------------------------------------------------------------------------- the page
def _pm(figure: Optional[dict], scale: float = 100.0) -> str:
    if not figure:
        return "-"
    std = "" if figure["std"] is None else f" ± {scale * figure['std']:.1f}"
    return f"{scale * figure['mean']:.1f}{std}"


def _cell(cell: Optional[dict]) -> str:
    if cell is None:
        return "not run yet"
    parts = [f"**{_pm(cell['average_accuracy'])}**", f"F {_pm(cell['forgetting'])}",
             f"R[k][k] {_pm(cell['accuracy_right_after_learning'])} (lowest {_pm(cell['lowest_right_after_learning'])})"]
    if "intransigence_vs_naive" in cell:
        parts.append(f"I {_pm(cell['intransigence_vs_naive'])}")
    if cell["values"]:
        parts.append(", ".join(f"{k.split('.')[-1]} {v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}"
                               for k, v in cell["values"].items()))
    return "<br>".join(parts)


def page(rows: list[dict]) -> str:
    """docs/results.md from the measured rows (and a line per row not measured yet)."""
    measured = {r["name"]: r for r in rows}
    lines = [
        "# Published results, reproduced, then tuned",
        "",
        "Written by `benchmarks/results.py` from `benchmarks/results/*.json`; do not edit by hand. Each row:",
        "the published average test accuracy; ours with the paper's protocol and hyperparameters",
        "(`configs/reproduce/NAME.yaml`); ours tuned by a clsweep sweep over the same protocol",
        "(`search_spaces/NAME.yaml`, selecting on a validation split, never on test data, at the end of training",
        "unless the tuned cell names another protocol: A-GEM's rows tune on their first 3 tasks alone, as A-GEM did);",
        "and the naive baseline tuned on the same budget over the hyperparameters the two share (`train.lr`), so",
        "a gain that comes from the learning rate is not credited to the regulariser. Every cell is the mean ±",
        "std over the same evaluation seeds (1..N, fresh: the sweeps train with seed 0), in %: average test",
        "accuracy (bold); F, forgetting; R[k][k], the accuracy on each task right after learning it (mean over",
        "tasks, and the lowest): a model that stopped learning shows there; I, intransigence against the tuned",
        "naive run of the same seed (its R[k][k]: what the regulariser cost in plasticity); the chosen values.",
        "A reproduction counts when it lies within two published standard deviations, or within 1 point of a",
        "published mean given alone.",
        "",
        "| row | published | reproduced | tuned | tuned, realistic | naive, tuned | cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in ROWS.items():
        r = measured.get(name)
        published = f"{100 * row.published:.1f}" + ("" if row.published_std is None else
                                                      f" ± {100 * row.published_std:.1f}")
        if r is None:
            lines.append(f"| `{name}` | {published} | not run yet | | | | |")
            continue
        cost = [f"{r['reproduced']['seconds']} s reproduced"]
        for key, label in (("sweep", "sweep"), ("realistic_sweep", "realistic sweep"), ("naive_sweep", "naive sweep")):
            if key in r:
                cost.append(f"{label}: {r[key]['trials']} trials, {r[key]['task_trainings']} task trainings, "
                            f"{r[key]['seconds']} s")
        for key in ("tuned", "realistic", "naive_tuned"):
            if key in r:
                cost.append(f"{key.replace('_', ' ')} runs {r[key]['seconds']} s")
        verdict = _verdict(row, r["reproduced"]["average_accuracy"]["mean"])
        tuned, realistic = _cell(r.get("tuned")), ""
        if not r.get("sweep", {}).get("selection", "end_of_training").startswith("end_of_training"):
            tuned += f"<br>selected by {r['sweep']['selection']}"
            realistic = "the tuned cell: the paper's own protocol"
        elif "realistic" in r:
            realistic = f"{_cell(r['realistic'])}<br>selected by {r['realistic_sweep']['selection']}"
        elif row.realistic:
            realistic = f"{row.realistic} not run yet"
        lines.append(f"| `{name}` | {published} | {_cell(r['reproduced'])}<br>{verdict} | {tuned} | {realistic} | "
                     f"{_cell(r.get('naive_tuned'))} | {'<br>'.join(cost)}<br>{r['machine']} |")
    if rows:
        seconds, cpus = table_seconds(rows), sorted({r["machine"] for r in rows})
        lines += ["", f"The whole table, as measured: {seconds} s ({seconds / 3600:.1f} h) on {', '.join(cpus)}: "
                      f"every row's phases, a naive sweep two rows share counted once."]
    lines += ["", "Sources and commands:", ""]
    for name, row in ROWS.items():
        r = measured.get(name)
        command = r["command"] if r else f"python benchmarks/results.py --row {name}"
        lines.append(f"- `{name}`: {row.source}. `{command}`")
    notes = [r["note"] for r in rows if r.get("note")]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def table_seconds(rows: list[dict]) -> int:
    """Seconds every measured row took, each sweep counted once by its name (a naive sweep the EWC and
    online EWC rows of one protocol share is run once)."""
    runs = sum(r[key]["seconds"] for r in rows for key in ("reproduced", "tuned", "realistic", "naive_tuned")
               if key in r)
    sweeps = {r[key]["name"]: r[key]["seconds"] for r in rows for key in ("sweep", "realistic_sweep", "naive_sweep")
              if key in r}
    return runs + sum(sweeps.values())


def _verdict(row: Row, value: float) -> str:
    tolerance = 2 * row.published_std if row.published_std is not None else 0.01
    inside = abs(value - row.published) <= tolerance + 1e-9
    return f"{'within' if inside else 'OUTSIDE'} {round(100 * tolerance, 1):g} pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", default=[], choices=list(ROWS), help="measure this row (repeatable)")
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds 1..N (default 5)")
    parser.add_argument("--data-dir", default=None, help="data root holding MNIST/raw (default: as reproduce.py)")
    parser.add_argument("--keep", metavar="DIR", help="keep the sweeps here, and reuse finished ones")
    parser.add_argument("--realistic", action="store_true",
                        help="measure only the tuned, realistic cell of rows already measured (the others are kept)")
    parser.add_argument("--write", action="store_true", help="only regenerate docs/results.md from the JSON files")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a config field in every run and sweep (a smoke run: printed, not written)")
    parser.add_argument("--trials", type=int, help="trials per sweep (a smoke run: printed, not written)")
    args = parser.parse_args()
    if not args.row and not args.write:
        parser.error("give --row NAME (repeatable) or --write")
    from clcore.config import parse_override

    smoke = bool(args.set or args.trials)
    fixed = {"benchmark.data_dir": args.data_dir or default_data_dir(), **dict(parse_override(o) for o in args.set)}
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clsweep-results-") as tmp:
        storage = Path(args.keep).resolve() if args.keep else Path(tmp)
        for name in args.row:
            started = time.perf_counter()
            seeds = list(range(1, args.seeds + 1))
            row = realistic_only(name, seeds, storage, fixed, args.trials) if args.realistic else \
                measure(name, seeds, storage, fixed, args.trials)
            if smoke:
                print(json.dumps(row, indent=1), flush=True)
                print(f"{name}: {time.perf_counter() - started:.0f} s (a smoke run: not written)", flush=True)
                continue
            old = RESULTS / f"{name}.json"
            if old.exists() and json.loads(old.read_text()).get("note"):
                row["note"] = json.loads(old.read_text())["note"]  # the row's written explanation stays
            old.write_text(json.dumps(row, indent=1) + "\n")
            print(f"{name}: {time.perf_counter() - started:.0f} s; {old}", flush=True)
    if smoke:
        return 0
    rows = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))]
    DOC.write_text(page(rows))
    print(page(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
