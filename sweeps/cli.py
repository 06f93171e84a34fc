"""`clsweep`: the command line.

    clsweep train CONFIG.yaml [--set key=value ...] [--json]     one experiment, no Ray
    clsweep run SPACE.yaml [--set key=value ...] [--address ADDR] [--num-cpus N] [--dry-run]
    clsweep resume PATH [--resume-errored | --restart-errored] [--address ADDR]
    clsweep status PATH [--json]
    clsweep best SWEEP [--format yaml|json] [--out FILE] [--metric M] [--tracking-uri URI]
    clsweep sync PATH [--tracking-uri URI]                     upload a sweep's results to MLflow
    clsweep ui [--port 5000] [--tracking-uri sqlite:///mlruns.db]   the MLflow UI on 127.0.0.1
    clsweep schema [--out FILE]                                the sweep file's JSON Schema
    clsweep strategies                                         every strategy and its hyperparameters

``run`` validates the sweep file (with the overrides) before Ray starts, then runs it on a local
Ray instance, or on the cluster at ``--address`` / ``$RAY_ADDRESS`` (``ray job submit --
clsweep run ...`` works too). PATH is a sweep's storage folder, ``<storage.path>/<name>``.
Exit status (``run``, ``resume``): 0 done, 1 the sweep ended with no complete trial, 2 bad input,
3 done but a trial was lost to infrastructure (a node or worker went away; ``resume
--resume-errored`` continues it, ``--restart-errored`` reruns it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from clcore.config import ConfigError, ExperimentConfig, parse_override

# Imports of torch, Ray and MLflow happen inside the commands that need them, so `clsweep --help`,
# `clsweep run --dry-run` and `clsweep status` start in well under a second (benchmarks/cli_startup.py).


EXIT_NO_TRIAL, EXIT_BAD_INPUT, EXIT_LOST = 1, 2, 3


def sweep_exit_status(state) -> int:
    """``run``'s and ``resume``'s exit status for the sweep ``state`` they leave (the module docstring)."""
    return EXIT_NO_TRIAL if state.chosen_config() is None else EXIT_LOST if state.lost() else 0


def _overrides(pairs: list[str]) -> dict:
    return dict(parse_override(p) for p in pairs or [])


def cmd_train(args: argparse.Namespace) -> int:
    import clcore

    config = ExperimentConfig.from_yaml(args.config).with_overrides(_overrides(args.set))
    result = clcore.run(config)
    if args.json:
        print(json.dumps(_nan_as_null(result.to_dict()), allow_nan=False))
        return 0
    print(f"device: {result.device}   training time: {result.train_seconds:.1f}s")
    for name, matrix in (("validation", result.val_matrix), ("test", result.test_matrix)):
        print()
        print(format_matrix(name, matrix))
    print("\nmetrics")
    for key, value in result.metrics.items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    return 0


def _nan_as_null(value):
    """Strict JSON: a NaN (a metric that measures nothing, an empty validation split) becomes null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_as_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_as_null(v) for v in value]
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from sweeps.spec import load_spec

    spec = load_spec(args.space, args.set)  # validated here, before Ray is imported
    if args.dry_run:
        print(spec.to_yaml(), end="")
        print(f"# valid; results would go to {spec.experiment_path}")
        return 0
    from sweeps.runner import run_sweep

    state = run_sweep(spec, address=args.address, num_cpus=args.num_cpus, tracking=_tracking(args))
    print(format_summary(state))
    return sweep_exit_status(state)


def cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep

    errored = "resume" if args.resume_errored else "restart" if args.restart_errored else "keep"
    state = resume_sweep(args.path, address=args.address, num_cpus=args.num_cpus, errored=errored,
                         tracking=_tracking(args))
    print(format_summary(state))
    return sweep_exit_status(state)


def cmd_compare(args: argparse.Namespace) -> int:
    from sweeps.compare import plan

    tokens = [t.strip() for t in args.protocols.split(",") if t.strip()]
    specs = plan(args.space, tokens, args.seeds, args.set)  # every protocol validated before Ray starts
    if args.dry_run:
        for token, spec in specs:
            print(f"{token}: {spec.experiment_path} ({spec.protocol_description}, "
                  f"evaluation seeds {spec.evaluation_seeds})")
        return 0
    from sweeps.compare import markdown, run_compare

    rows, folder = run_compare(args.space, tokens, args.seeds, args.set, address=args.address,
                               num_cpus=args.num_cpus, tracking_for=lambda spec: _tracking(args))
    print()
    print(markdown(rows), end="")
    print(f"table: {folder}/compare.md (.csv, .json, .png)")
    return 0 if all(r["test_average_accuracy"] is not None for r in rows) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from sweeps.storage import load_sweep  # JSON files only: no Ray, no pickle

    state = load_sweep(args.path)
    if args.json:
        print(json.dumps(state.to_summary(), indent=2, default=str))
        return 0
    print(format_trials(state))
    print(format_summary(state, table=False))
    return 0


def _tracking(args: argparse.Namespace):
    from sweeps.tracking import MLflowTracking

    return MLflowTracking(args.tracking_uri)


def cmd_best(args: argparse.Namespace) -> int:
    from sweeps.best import SweepNotFoundError, best_run

    try:
        best = best_run(args.sweep, args.metric, args.tracking_uri, args.mode)
    except SweepNotFoundError as error:
        print(f"clsweep best: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    data = best.config.to_dict()
    text = best.config.to_yaml() if args.format == "yaml" else json.dumps(data, indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    print(f"best trial {best.trial_id} (MLflow run {best.run_id}): {best.metric} = "
          f"{best.metrics[best.metric]:.4f} ({best.mode})" + (f"; config written to {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from sweeps.mlflow_store import TrackingUnavailableError
    from sweeps.tracking import sync

    try:
        report = sync(args.path, args.tracking_uri)
    except TrackingUnavailableError as error:
        print(f"clsweep sync: error: {error}; nothing was uploaded, the results stay in {args.path}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report.describe())
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from sweeps.mlflow_store import DEFAULT_ARTIFACT_DIR, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"clsweep ui: {uri} is a tracking server already: open it in a browser", file=sys.stderr)
        return EXIT_BAD_INPUT
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port), "--workers", "1"]
    if sqlite_path(uri) is not None:
        command += ["--artifacts-destination", str(sqlite_path(uri).parent / DEFAULT_ARTIFACT_DIR)]
    print(f"MLflow UI for {uri} at http://127.0.0.1:{args.port}  (Ctrl-C stops it)", flush=True)
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # the UI needs no job runner
    os.execve(sys.executable, command, env)


def cmd_schema(args: argparse.Namespace) -> int:
    from sweeps.schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from clcore.strategies import catalogue

    print(catalogue.markdown_table(), end="")
    return 0


# ------------------------------------------------------------------------------ formatting
def format_matrix(name: str, matrix: list[list[float]], indent: str = "") -> str:
    lines = [f"{indent}{name} accuracy matrix (row i: after task i; column j: task j)"]
    for i, row in enumerate(matrix):
        lines.append(f"{indent}  after task {i}: " + " ".join(f"{v:6.3f}" for v in row))
    return "\n".join(lines)


def format_trials(state) -> str:
    """One line per trial, complete ones ranked best first: rank, id, outcome, the objective with the
    tasks it was measured after, searched values; then errors. Only complete trials get a rank."""
    from sweeps.storage import Outcome

    metric = state.spec.objective.metric
    keys = list(state.spec.search)
    header = ["rank", "trial", "outcome", f"{metric} (after tasks)", *keys]
    rows = []
    for rank, t in enumerate(state.ranked(), 1):
        value = t.last.get(metric)
        score = "" if value is None else f"{value:.4f} ({t.tasks_seen}/{t.n_tasks})"
        rows.append([rank if t.outcome == Outcome.COMPLETE else "-", t.trial_id, t.outcome, score,
                     *(_short(t.params.get(k)) for k in keys)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines += [f"{t.trial_id} ({t.cause or 'cause not recorded'}): {t.error}" for t in state.trials if t.error]
    lines += [f"{t.trial_id}: rejected: {t.broken}" for t in state.trials if t.outcome == Outcome.REJECTED]
    return "\n".join(lines)


def format_summary(state, table: bool = True) -> str:
    """Counts, the best trial (config, accuracy matrices, where its results are), what to run next."""
    from sweeps.spec import Rounds
    from sweeps.storage import BEST_CONFIG_FILE, Outcome, folder_bytes

    spec, metric = state.spec, state.spec.objective.metric
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(state.counts().items())) or "no trials yet"
    wall = f" in {state.wall_seconds:.0f}s" if state.wall_seconds is not None else ""
    lines = ["", f"sweep {spec.name}: {len(state.trials)} trials{wall} ({counts})"]
    failed = [t for t in state.trials if t.outcome == Outcome.FAILED]
    if table and failed:
        lines += ["failed trials:"] + [f"  {t.trial_id} ({t.cause or 'cause not recorded'}): {t.error}"
                                       for t in failed]
    lost = state.lost()
    if lost:
        lines.append(f"{len(lost)} trials lost to infrastructure (a node or worker went away), not to their own "
                     f"training: clsweep resume {state.path} --resume-errored continues them from their last "
                     f"checkpoint, --restart-errored reruns them from scratch")
    best = state.best()
    rejected = sum(t.outcome == Outcome.REJECTED for t in state.trials)
    if isinstance(spec.protocol, Rounds):
        return "\n".join(lines[:1] + _rounds(state) + [
            f"storage: {state.path}, {folder_bytes(state.path) / 1e6:.1f} MB   (clsweep status {state.path})"])
    lines += _reference(state.reference)
    if spec.objective.require:
        lines.append("required after every task: " + ", ".join(map(str, spec.objective.requirements())) +
                     f" ({rejected} trials rejected)")
    if best is None:
        lines.append(f"no trial has completed all {spec.n_tasks} tasks yet" if not rejected else
                     f"no trial completed all {spec.n_tasks} tasks keeping the requirements")
    else:
        lines.append(f"best trial {best.trial_id}: {metric} = {best.last[metric]:.4f} ({spec.mode}) "
                     f"after {best.tasks_seen}/{best.n_tasks} tasks")
        lines += _plasticity(best, spec, state.reference)
        lines += _finalists(state)
        lines += _evaluation(state)
        lines += [f"  {k} = {_short(v)}" for k, v in best.params.items()]
        for name, key in (("validation", "val_matrix"), ("test", "test_matrix")):
            if best.last.get(key):
                lines.append(format_matrix(name, best.last[key], indent="  "))
        lines.append(f"  results: {best.path}")
        config_file = state.path / BEST_CONFIG_FILE
        if config_file.exists():
            lines.append(f"  config:  {config_file}   (clsweep train {config_file} reruns it)")
    unfinished = sum(not t.outcome.ended for t in state.trials)
    if unfinished:
        lines.append(f"{unfinished} trials unfinished: continue with   clsweep resume {state.path}")
    lines.append(f"storage: {state.path}, {folder_bytes(state.path) / 1e6:.1f} MB   (clsweep status {state.path})")
    return "\n".join(lines)


def _rounds(state) -> list[str]:
    """per_task, chf: each round's trials and the one it kept (the schedule), then the schedule's evaluation."""
    from sweeps.storage import BEST_CONFIG_FILE, Outcome

    spec, metric = state.spec, state.spec.objective.metric
    lines = [f"sweep {spec.name}: {spec.protocol_description}; {len(state.schedule)} of {spec.n_tasks} rounds "
             f"finished" + (f" in {state.wall_seconds:.0f}s" if state.wall_seconds is not None else "")]
    for task, runs in enumerate(state.rounds):
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(runs.counts().items())) or "no trials yet"
        kept = next((entry for entry in state.schedule if entry["task"] == task), None)
        chosen = "" if kept is None else f": kept {kept['trial_id']}, {metric} {kept['value']:.4f}, " + \
            ", ".join(f"{k} = {_short(v)}" for k, v in kept["values"].items())
        if kept is not None and "a_star" in kept:  # chf: what fine-tuning reached, and which attempt was kept
            chosen += f" (fine-tuning {kept['a_star']:.4f}; attempt {kept['attempt'] + 1}" + \
                ("" if kept["passed"] else ", none within the drop: the weakest") + ")"
        lines.append(f"  round {task} ({counts}){chosen}")
        lines += [f"    {t.trial_id} ({t.cause or 'cause not recorded'}): {t.error}"
                  for t in runs.trials if t.outcome == Outcome.FAILED]
    lines += _evaluation(state)
    config_file = state.path / BEST_CONFIG_FILE
    if config_file.exists():
        lines.append(f"  schedule: {config_file}   (clsweep train {config_file} trains it again)")
    elif not state.schedule_complete:
        lines.append(f"the schedule is not complete: continue with   clsweep resume {state.path}")
    return lines


def _reference(stored) -> list[str]:
    """The reference's a*_k per task, and the learning rate each came from."""
    if stored is None:
        return []
    tried = ", ".join(f"{run['lr']:g}" for run in sorted(stored["runs"].values(), key=lambda run: run["lr"]))
    return [f"reference {stored['strategy']} at lr {tried} (a*_k: its best accuracy on task k right after learning "
            f"it; from lr " + " ".join(f"{lr:g}" for lr in stored["lr"]) + ")",
            "  validation a*_k: " + " ".join(f"{v:.4f}" for v in stored["val"]),
            "  test a*_k:       " + " ".join(f"{v:.4f}" for v in stored["test"])]


def _plasticity(trial, spec, reference) -> list[str]:
    """What the best score bought: forgetting and the accuracy on each task right after learning it,
    with a warning when that came near chance (a model that stopped learning scores well on average);
    against the reference, its intransigence and lowest share of the reference's a*_k."""
    matrix = trial.last.get("val_matrix") or []
    if not matrix:
        return []
    benchmark = spec.trial_config(trial.params).benchmark
    learned = [matrix[k][k] for k in range(len(matrix))]
    margins = [a - benchmark.chance_on_task(k) for k, a in enumerate(learned)]
    worst = min(range(len(learned)), key=margins.__getitem__)
    lines = [f"  val forgetting {trial.last.get('val_forgetting', float('nan')):.4f}, accuracy on the task just "
             f"learned {learned[-1]:.4f}, lowest right after learning {min(learned):.4f} (task {worst}: "
             f"{learned[worst]:.4f}, chance {benchmark.chance_on_task(worst):.4f})"]
    if reference is not None:
        from clcore import metrics as M

        a_star = reference["val"]
        lines.append(f"  val intransigence {M.intransigence(matrix, a_star):.4f} against the {reference['strategy']} "
                     f"reference, lowest share of its a*_k {M.min_plasticity_ratio(matrix, a_star):.4f}")
    if margins[worst] < NEAR_CHANCE:
        lines.append(f"warning: the best trial learned task {worst} only to {learned[worst]:.4f} (chance "
                     f"{benchmark.chance_on_task(worst):.4f}): it may have stopped learning; objective.require: "
                     f"{{val_min_accuracy_current_task: '>= 0.9'}} rejects such trials")
    return lines


def _evaluation(state) -> list[str]:
    """The protocol's evaluation of the chosen values on fresh seeds: test metrics, mean ± std."""
    row = state.evaluation_row()
    if row is None:
        return []
    spec = state.spec
    m = row["metrics"]
    lines = [f"  {spec.protocol_description}; seeds {row['seeds']}:"]
    for name, label in (("average_accuracy", "average accuracy"), ("forgetting", "forgetting"),
                        ("min_accuracy_current_task", "lowest accuracy right after learning"),
                        ("accuracy_current_task", "accuracy on the last task just learned"),
                        ("intransigence", "intransigence")):
        if f"test_{name}" in m:
            lines.append(f"    test {label} {m[f'test_{name}']['mean']:.4f} ± {m[f'test_{name}']['std']:.4f}")
    lowest = m.get("test_min_accuracy_current_task", {}).get("mean")
    evaluated = state.chosen_config().benchmark
    chance = max(evaluated.chance_on_task(k) for k in range(evaluated.tasks_run))
    if lowest is not None and lowest < chance + NEAR_CHANCE:
        lines.append(f"warning: on the evaluation stream the chosen values learned some task only to {lowest:.4f} "
                     f"(chance {chance:.4f}): tuned on the prefix, they may have stopped learning after it")
    return lines


def _finalists(state) -> list[str]:
    """Each finalist's objective over its fresh seeds, mean ± std, beside its search score."""
    rows = state.finalist_rows()
    if not rows:
        return []
    lines = [f"  chosen on the finalists' mean over seeds {rows[0]['seeds']} (its search score was one seed's):"]
    for row in sorted(rows, key=lambda r: r["mean"], reverse=state.spec.mode == "max"):
        gap = row["mean"] - row["search_value"]
        lines.append(f"    {row['trial_id']}  {row['mean']:.4f} ± {row['std']:.4f}   search {row['search_value']:.4f}"
                     f"   gap {gap:+.4f}")
    return lines


NEAR_CHANCE = 0.1  # accuracy points above chance on a task just learned below which the summary warns


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clsweep", description="Hyperparameter sweeps for continual learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one experiment from a config file (no Ray)")
    p.add_argument("config", help="ExperimentConfig YAML (a best config exported by `clsweep best` works too)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. train.lr=0.1")
    p.add_argument("--json", action="store_true",
                   help="print the result as strict JSON (NaN, for a metric that measures nothing, as null)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run a sweep file on Ray Tune")
    p.add_argument("space", help="sweep file, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a sweep setting or config field: algorithm.num_samples=8, scheduler=fifo, "
                        "train.epochs=2 (fixes the field), search.train.lr.high=0.5")
    _ray_arguments(p)
    _tracking_argument(p, "the sweep file's tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else the "
                          "embedded sqlite:///mlruns.db; giving it turns MLflow tracking on")
    p.add_argument("--dry-run", action="store_true", help="validate and print the resolved sweep; start nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted sweep from its storage folder (Ray unpickles its "
                                      "files there: resume only folders you trust)")
    p.add_argument("path", help="the sweep's storage folder, <storage.path>/<name>")
    errored = p.add_mutually_exclusive_group()
    errored.add_argument("--resume-errored", action="store_true",
                         help="continue the trials lost to infrastructure (a node or worker went away) from their "
                              "last task checkpoint; a trial whose own training failed stays failed")
    errored.add_argument("--restart-errored", action="store_true",
                         help="rerun the trials lost to infrastructure from scratch (same trial and seed: the "
                              "same numbers as continuing them, in more time)")
    _ray_arguments(p)
    _tracking_argument(p, "the store the sweep used, else as for run; giving it turns MLflow tracking on")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("compare", help="one sweep file under several selection protocols, side by side")
    p.add_argument("space", help="sweep file, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--protocols", default="end_of_training,prefix:2",
                   help="comma-separated protocol tokens, e.g. end_of_training,prefix:2,prefix:2:rest,"
                        "two_phase:seed=1,per_task,chf:1e4 (a wrong one is answered with the grammar; "
                        "docs/protocols.md); default: end_of_training,prefix:2")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds each protocol's choice trains on (default: 3)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a sweep setting, as for run")
    _ray_arguments(p)
    _tracking_argument(p, "as for run")
    p.add_argument("--dry-run", action="store_true", help="validate every protocol's sweep; start nothing")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("status", help="state of a running or finished sweep, from its storage folder")
    p.add_argument("path", help="the sweep's storage folder, <storage.path>/<name>")
    p.add_argument("--json", action="store_true", help="print the state as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("best", help="the best trial's config of a sweep, read from MLflow")
    p.add_argument("sweep", help="the sweep's name (its MLflow experiment)")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default: yaml)")
    p.add_argument("--out", metavar="FILE", help="write the config here (`clsweep train FILE` retrains it)")
    p.add_argument("--metric", help="rank by this metric (default: the sweep's objective)")
    p.add_argument("--mode", choices=("max", "min"), help="default: the sweep's mode for its objective")
    _tracking_argument(p)
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("sync", help="upload a sweep's results from its storage folder to MLflow (only what is missing)")
    p.add_argument("path", help="the sweep's storage folder, <storage.path>/<name>")
    _tracking_argument(p, "the store the sweep used")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 for the local store")
    p.add_argument("--port", type=int, default=5000, help="default: 5000")
    _tracking_argument(p)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("schema", help="print the sweep file's JSON Schema (editors complete and check sweep files)")
    p.add_argument("--out", metavar="FILE", help="write it here (docs/sweep.schema.json is this output)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("strategies", help="every strategy and its hyperparameters, as a Markdown table")
    p.set_defaults(func=cmd_strategies)
    return parser


def _tracking_argument(p: argparse.ArgumentParser,
                       default: str = "$MLFLOW_TRACKING_URI, else the embedded sqlite:///mlruns.db") -> None:
    p.add_argument("--tracking-uri", metavar="URI", help=f"MLflow tracking server or store (default: {default})")


def _ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")


def _stop_on_sigterm() -> None:
    """SIGTERM stops a sweep as Ctrl-C does: Ray Tune saves its state and ends the trials, then the
    local Ray this driver started is shut down (a second signal skips Tune's last save)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():  # (main() called from a thread: no handlers)
        signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))


def main(argv: list[str] | None = None) -> int:
    """The ``clsweep`` program (``argv`` None: ``sys.argv``). Called with ``argv`` from Python (a test,
    a notebook), it leaves Ray's authentication mode to the caller's environment: the program alone,
    in a process of its own, chooses token mode for a local Ray, before Ray is first imported (Ray
    keeps the mode it read first)."""
    program = argv is None
    args = build_parser().parse_args(argv)
    from sweeps import environment

    environment.set_for_this_process()  # the program's own environment: Ray's and MLflow's settings
    if args.command in ("run", "resume", "compare") and not getattr(args, "dry_run", False):
        _stop_on_sigterm()
        if program and not (args.address or os.environ.get("RAY_ADDRESS")):  # a local Ray will start
            environment.require_token_for_local_ray()
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError) as error:
        print(f"clsweep {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as error:
        train = sys.modules.get("clcore.train")  # a diverged run has imported it
        if train is None or not isinstance(error, train.TrainingDivergedError):
            raise
        print(f"clsweep {args.command}: training diverged: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"clsweep {args.command}: interrupted; continue with clsweep resume PATH", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
