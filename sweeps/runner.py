"""Run, resume and read sweeps: Ray Tune's Tuner with the spec's search algorithm, scheduler,
resources and storage.

    state = run_sweep(load_spec("search_spaces/quickstart.yaml"))
    state = resume_sweep("ray_results/quickstart")          # after the driver died
    state = load_sweep("ray_results/quickstart")            # from storage only (`clsweep status`)

Ray: `run_sweep` joins the cluster at ``address`` (or ``$RAY_ADDRESS``; inside ``ray job submit``
that is set for you) and otherwise starts a local Ray instance without the dashboard; a Ray
already initialised in this process is used as it is.

Data: the dataset is read once, in the driver, before Ray starts (so a missing dataset fails at
once), and shared with every trial through the object store (`tune.with_parameters`): each node
fetches it once, and each trial builds its own tasks from it on its own device.

Storage (``<storage.path>/<name>``): Ray's own files, and the project's record that
`sweeps.storage` describes and reads without Ray (``sweep.yaml``, the driver's ``trials.jsonl``
ledger, each trial's ``tasks.jsonl``, ``summary.json``, ``best_config.yaml``). `resume_sweep` hands
the folder to Ray's ``Tuner.restore``, which unpickles Ray's files: resume only folders you trust,
as with Ray itself; ``clsweep status``, ``best`` and ``sync`` read no pickle. Storage is a local or
shared directory (on a multi-node cluster every node must reach it, as Ray requires).

The best trial is the best of those that saw every task: a trial a scheduler stopped early was
scored on fewer tasks, so its value does not compare (average accuracy over two tasks is
usually higher than over five). For the same reason Optuna is told such a trial was pruned, not
complete, so TPE does not take its early score for a final one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from clcore.config import set_path
from clcore.data import load_raw, raw_key
from sweeps import environment, localray, space
from sweeps import ray_private
from sweeps.ray_private import BestOfCompleteReporter, attach_callbacks, snapshot_before_training
from sweeps.spec import (OBJECTIVE_ATTR, STRENGTH, Algorithm, Chf, EndOfTraining, Fifo, Objective, ReferenceSpec,
                         Rounds, Selection, SweepSpec, Values)
from sweeps.storage import (BEST_CONFIG_FILE, CHECKPOINT_DIRS, ERROR, EVALUATION_DIR, EVALUATION_OF, FAILURE_FILE,
                            FINALIST_OF, FINALISTS_DIR,
                            INFRASTRUCTURE, PLASTICITY_DIR, REFERENCE_DIR, REFERENCE_FILE, ROUNDS_DIR, SCHEDULE,
                            SPEC_FILE, SUMMARY_FILE, TERMINATED, TIME_ATTR, TRAINING, Outcome,
                            SweepState, TrialLedger, TrialRecord, as_reference, load_sweep, read_reference,
                            read_schedule, reference_from, round_dirname, trial_dirname, write_schedule)
from sweeps.trainable import CHECKPOINT_FILE, TrialLoggerFactory, run_trial

# Ray settings for a readable console and lean storage; set only where the user has not. Ray
# reads them when the sweep starts.
#   RAY_AIR_NEW_OUTPUT=0: the classic trial table (a CLIReporter with the objective and the
#     searched values as columns) instead of a box of every metric after each trial result;
#   TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1: no TensorBoard event files; result.json and
#     progress.csv come from the two loggers the runner adds itself;
#   TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S=0: no warning each time trials
#     checkpoint faster than every 5 s (they checkpoint after every task, by design).

class SweepExistsError(FileExistsError):
    """The sweep's storage folder already holds a sweep."""


# ------------------------------------------------------------------------------ tracking hook
class Tracking:
    """Where a sweep's results go besides Ray storage. This default goes nowhere.

    On the driver the runner calls `sweep_started` before Ray Tune starts (also on resume), adds
    `callbacks` to Ray Tune (they are attached after ``tuner.pkl`` is written, so they are never
    pickled into it: a resumed sweep gets fresh ones), hands the picklable factory from
    `trial_logger` to every trial, and calls `sweep_finished` with the state read back from
    storage. In a trial, ``factory(trial_id, trial_name, config)`` is called once and the function
    it returns gets every result the trial reports (what goes into ``tasks.jsonl`` and Ray's ``result.json``).
    """

    def sweep_started(self, spec: SweepSpec, experiment_dir: Path, resumed: bool) -> None:
        """Before Ray Tune starts."""

    def callbacks(self, spec: Optional[SweepSpec] = None) -> list:
        """Ray Tune callbacks for the driver; ``spec``: the phase whose trials they see (a per_task
        round), when not the sweep's search."""
        return []

    def trial_logger(self) -> Optional[TrialLoggerFactory]:
        """A picklable ``(trial_id, trial_name, config) -> (result -> None)``, or None."""
        return None

    def sweep_finished(self, spec: SweepSpec, state: "SweepState") -> None:
        """After the sweep (also after an interrupted one)."""


# ------------------------------------------------------------------------------ running
def run_sweep(spec: SweepSpec, *, address: Optional[str] = None, num_cpus: Optional[int] = None,
              tracking: Optional[Tracking] = None, verbose: int = 1) -> SweepState:
    """Run ``spec`` to the end on Ray Tune; the state read back from storage.

    Raises `SweepExistsError` if its storage folder already holds a sweep (`resume_sweep` continues one).
    """
    path = spec.experiment_path
    spec = _stored_at(spec, path)
    if (path / SPEC_FILE).exists() or any(path.glob("experiment_state-*.json")):
        raise SweepExistsError(f"{path} already holds a sweep: continue it with `clsweep resume {path}`, "
                               f"or give this one another name (--set name=...) or storage.path")
    tracking = tracking or Tracking()
    raw = load_raw(spec.example_config().benchmark)
    with ray_session(address, num_cpus):
        spec = _concurrency_fitted(spec, verbose)
        path.mkdir(parents=True, exist_ok=True)
        spec.to_yaml(path / SPEC_FILE)
        tracking.sweep_started(spec, path, resumed=False)
        reference = _train_reference(spec, path, raw, verbose)
        if isinstance(spec.protocol, Rounds):
            return _fit_rounds(spec, path, tracking, raw, verbose)
        tuner = _new_tuner(spec, path, raw, tracking, verbose, reference)
        return _fit(tuner, spec, path, tracking, raw, verbose, reference)


def _concurrency_fitted(spec: SweepSpec, verbose: int) -> SweepSpec:
    """``algorithm.max_concurrent: null`` (the default) becomes the number of trials the cluster fits
    now (`trials_that_fit`). A searcher asked for more would propose trials that only wait (TPE without
    their results), so the number is fixed here and the stored sweep.yaml records it (a resume keeps it).
    A scheduler whose trials wait for each other (HyperBand's brackets, PBT's population) keeps null:
    no cap, every trial is created at once."""
    import ray

    if spec.algorithm.max_concurrent is not None or spec.scheduler.waits_for:
        return spec
    total = ray.cluster_resources()
    limit, kind = trials_that_fit(total, spec.resources.cpu, spec.resources.gpu)
    if verbose:
        print(f"clsweep: {limit} trials at a time (algorithm.max_concurrent: null; the cluster has "
              f"{total.get(kind, 0.0):g} {kind}s, {getattr(spec.resources, kind.lower()):g} per trial)", flush=True)
    return spec.model_copy(update={"algorithm": spec.algorithm.model_copy(update={"max_concurrent": limit})})


def trials_that_fit(total: dict[str, float], cpu: float, gpu: float) -> tuple[int, str]:
    """How many trials of ``cpu`` CPUs and ``gpu`` GPUs the resources ``total`` (Ray's
    ``cluster_resources()``) hold at once (at least 1), and the resource that bounds them."""
    fits = {"CPU": total.get("CPU", 0.0) / cpu, **({"GPU": total.get("GPU", 0.0) / gpu} if gpu else {})}
    kind = min(fits, key=fits.get)
    return max(1, int(fits[kind] + 1e-9)), kind


# Whether a trial's Ray actor goes to the next trial when it ends: on a local instance this driver
# started, yes; on a cluster it joined, no. Reuse saves each trial its worker's start (the quickstart
# sweep: 71 s with reuse, 148 s without, 2.1x; benchmarks/actor_reuse.py), but Tune hands a cached
# actor out without asking whether its node is still there, and a new trial that fails its reset on
# a lost node's actor is failed at once, whatever ``max_failures`` says (Ray 2.60's controller
# retries no trial that has not started; docs/cluster.md, "Lost nodes and failed trials"). A local
# instance's one node is the driver's own machine.
# None: that rule; True or False: always (benchmarks/actor_reuse.py sets it).
REUSE_ACTORS: Optional[bool] = None


def reuse_actors() -> bool:
    """`REUSE_ACTORS`, for the Ray this process is connected to."""
    return ray_private.started_here() if REUSE_ACTORS is None else REUSE_ACTORS


def _new_tuner(spec: SweepSpec, path: Path, raw, tracking: Tracking, verbose: int,
               reference: Optional[dict], **start) -> tune.Tuner:
    return tune.Tuner(
        _trainable(spec, raw, tracking.trial_logger(), reference, **start),
        param_space=space.param_space(spec),
        tune_config=tune.TuneConfig(metric=OBJECTIVE_ATTR, mode=spec.mode,  # the objective, requirements applied
                                    search_alg=search_algorithm(spec), scheduler=scheduler(spec),
                                    num_samples=spec.algorithm.num_samples, reuse_actors=reuse_actors(),
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=str(path.parent), verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.storage.checkpoints_to_keep),
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback()], progress_reporter=_reporter(spec)))


def resume_sweep(path: str | Path, *, address: Optional[str] = None, num_cpus: Optional[int] = None,
                 errored: str = "keep", tracking: Optional[Tracking] = None) -> SweepState:
    """Continue an interrupted sweep from its storage folder.

    Finished trials are kept as they are; unfinished ones continue from their last task
    checkpoint; the search algorithm continues where it stopped. ``errored``: ``keep`` leaves
    failed trials failed; ``resume`` retries those lost to infrastructure (`TrialRecord.lost`) from their
    last checkpoint, ``restart`` from scratch. A trial whose own training failed stays failed.
    A sweep stopped before its search began (while its reference trained) begins it now.
    """
    if errored not in ("keep", "resume", "restart"):
        raise ValueError(f"errored must be keep, resume or restart, got {errored!r}")
    path = Path(path).expanduser().resolve()
    searching = (path / "tuner.pkl").exists()
    if not searching and not (path / SPEC_FILE).exists():
        raise FileNotFoundError(f"{path}: not a sweep clsweep has started (no {SPEC_FILE}, no tuner.pkl); give the "
                                f"folder `clsweep run` printed (<storage.path>/<name>)")
    state = load_sweep(path)
    spec = _stored_at(state.spec, path)  # the folder may have moved
    if errored != "keep":  # the user asks for the trials lost to infrastructure again: for a restart,
        for trial in state.lost():  # forget where they had got to
            (Path(trial.path) / FAILURE_FILE).unlink(missing_ok=True)
            for checkpoint in Path(trial.path).glob(CHECKPOINT_DIRS) if errored == "restart" else ():
                shutil.rmtree(checkpoint)
    if searching:
        if errored != "keep":  # a trial whose own training failed would fail the same way: it stays failed
            ray_private.skip_on_restore(path, {t.trial_id for t in state.trials
                                               if t.outcome == Outcome.FAILED and not t.lost})
        _agree_with_snapshot(state, errored)
    tracking = tracking or Tracking()
    raw = load_raw(spec.example_config().benchmark)
    with ray_session(address, num_cpus):
        tracking.sweep_started(spec, path, resumed=True)  # before trial_logger() is asked for
        reference = _train_reference(spec, path, raw, verbose=1)
        if isinstance(spec.protocol, Rounds):
            return _fit_rounds(spec, path, tracking, raw, 1)
        if not searching:
            return _fit(_new_tuner(spec, path, raw, tracking, 1, reference), spec, path, tracking, raw, 1, reference)
        # a restart is a resume with no checkpoint left: the same trial, folder and MLflow run (Ray's own
        # restart makes a new trial, and only of trials its possibly older snapshot has as failed)
        tuner = tune.Tuner.restore(str(path), _trainable(spec, raw, tracking.trial_logger(), reference),
                                   resume_unfinished=True, resume_errored=errored != "keep")
        return _fit(tuner, spec, path, tracking, raw, 1, reference)


def _agree_with_snapshot(state: SweepState, errored: str) -> None:
    """Before Ray restores ``state``'s sweep from its newest experiment snapshot: put back each checkpoint
    folder the snapshot would restore a trial from that Ray deleted since (a copy of the trial's
    newest: the trial continues from its newest anyway, see `sweeps.trainable`), and end in the
    ledger, with the reason, a trial that reported but that the snapshot does not list (Ray would
    never run it again; since the snapshot is written before each trial trains, only a sweep
    started by an earlier clsweep has one)."""
    listed = ray_private.snapshot_checkpoints(state.path)
    if listed is None:
        return  # Ray's restore says what is missing
    ledger = TrialLedger(state.path)
    for trial in state.trials:
        if trial.trial_id not in listed:
            if not trial.outcome.ended:
                reason = (f"lost: trial {trial.trial_id} reported {trial.tasks_seen} tasks, but Ray's experiment "
                          f"snapshot does not list it (a sweep started before clsweep wrote one as each trial starts)")
                ledger.trial_ended(trial.trial_id, ERROR, trial.params, 0, reason)
                print(f"clsweep: {reason}", flush=True)
            continue
        folder = Path(trial.path)
        present = sorted(folder.glob(CHECKPOINT_DIRS))
        for name in sorted(listed[trial.trial_id] - {p.name for p in present}):
            if present:
                shutil.copytree(present[-1], folder / name)
            else:  # an ended trial reports its record again; a restarted one starts from task 1: neither reads it
                (folder / name).mkdir(parents=True)
            print(f"clsweep: trial {trial.trial_id}: Ray's snapshot restores it from {name}, deleted since; put back "
                  f"{'as a copy of ' + present[-1].name if present else 'empty (nothing to continue from)'}", flush=True)


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> Optional[Path]:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a local Ray; nothing if Ray is up in this process.

    A local instance's processes are recorded (`sweeps.localray`), and those of earlier local
    instances whose driver was killed are ended first; returns the record (None when none was made).
    """
    environment.set_for_this_process()  # Tune reads its settings from the driver's environment
    import ray

    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("ray://"):
        raise ValueError(f"{address}: Ray Client addresses are not supported; submit the sweep as a Ray Job "
                         f"(ray job submit -- clsweep run ...) or run clsweep on a cluster node (--address auto)")
    if address:
        with _keeping_sigterm_handler():
            ray.init(address=address, runtime_env={"env_vars": environment.for_workers()})
        return None
    localray.reap_orphans()
    before = localray.children_now()
    with _keeping_sigterm_handler():
        # (a local Ray's workers inherit this process's environment; a runtime_env would make every
        # worker wait for Ray's runtime-env agent, 2-3 s per batch of trials on a 2-core machine)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    return localray.record(before)


@contextlib.contextmanager
def _keeping_sigterm_handler():
    """Ray's core worker installs a C-level SIGTERM handler at `ray.init` that aborts the process;
    put back the Python handler that was there (``clsweep`` stops a sweep in order on SIGTERM)."""
    import signal
    import threading

    handler = signal.getsignal(signal.SIGTERM)
    yield
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def ray_session(address: Optional[str] = None, num_cpus: Optional[int] = None):
    """`init_ray` for one sweep: a Ray this call started (local or joined) is shut down when the sweep
    ends, however it ends, and a local instance leaves no process behind; a Ray that was already up
    in this process stays up."""
    import ray

    if ray.is_initialized():
        yield
        return
    record = init_ray(address, num_cpus)
    try:
        yield
    finally:
        ray.shutdown()
        localray.end(record)


def _stored_at(spec: SweepSpec, experiment_path: Path) -> SweepSpec:
    """``spec`` with its storage path made absolute, as trials (in other working directories) need it."""
    return spec.model_copy(update={"storage": spec.storage.model_copy(update={"path": str(experiment_path.parent)})})


def _trainable(spec: SweepSpec, raw, trial_logger: Optional[TrialLoggerFactory], reference: Optional[dict],
               function=run_trial, **bound):
    """``function`` (`run_trial`, or `_run_again` with its ``key`` and ``values``) with the spec, the data,
    the logger and the reference bound, and the spec's resources per trial."""
    trainable = tune.with_parameters(function, spec=spec, raw=raw, trial_logger=trial_logger,
                                     reference=as_reference(reference), **bound)
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _trial_dirname(trial) -> str:
    return trial_dirname(trial.trial_id)


def _fit(tuner, spec: SweepSpec, path: Path, tracking: Tracking, raw, verbose: int,
         reference: Optional[dict]) -> SweepState:
    # the snapshot first: a trial in the ledger is in Ray's snapshot, with its searcher suggestion
    attach_callbacks(tuner, [snapshot_before_training(tuner), _TrialLedgerCallback(path), *tracking.callbacks()])
    started = time.perf_counter()
    tuner.fit()
    state = load_sweep(path)
    if spec.selection.finalists:
        _run_finalists(spec, state, raw, verbose, reference)
        state = load_sweep(path)
    if spec.evaluation_seeds:
        _evaluate(spec, state, raw, verbose, reference)
        state = load_sweep(path)
    return _finish(spec, state, path, tracking, started)


def _fit_rounds(spec: SweepSpec, path: Path, tracking: Tracking, raw, verbose: int) -> SweepState:
    """per_task and chf: one round per task, each a sweep of its own in ``rounds/task_<t>``, started from
    the model the round before kept; the kept trial of each round goes into ``schedule.json`` as the
    round ends, so a resume starts at the first round not in it (a round the driver left unfinished
    starts again). Then the schedule trains on the protocol's fresh seeds (`_evaluate_schedule`)."""
    started = time.perf_counter()
    schedule = read_schedule(path)
    play = _chf_round if isinstance(spec.protocol, Chf) else _per_task_round
    for task in range(len(schedule), spec.n_tasks):
        folder = path / ROUNDS_DIR / round_dirname(task)
        shutil.rmtree(folder, ignore_errors=True)
        kept = _kept_model(path / ROUNDS_DIR / round_dirname(task - 1), schedule[-1]) if schedule else None
        if verbose:
            print(f"clsweep: round {task + 1} of {spec.n_tasks}: task {task}" +
                  (f", from trial {schedule[-1]['trial_id']}'s model" if schedule else ""), flush=True)
        entry = play(spec, task, folder, kept, raw, tracking, verbose)
        if entry is None:
            print(f"clsweep: round {task + 1}: no trial completed task {task}; the schedule stops there", flush=True)
            break
        schedule.append({"task": task, **entry})
        write_schedule(path, schedule)
    state = load_sweep(path)
    if state.schedule_complete:
        _evaluate_schedule(spec, state, raw, verbose)
        state = load_sweep(path)
    return _finish(spec, state, path, tracking, started)


def _per_task_round(spec: SweepSpec, task: int, folder: Path, kept: Optional[dict], raw, tracking: Tracking,
                    verbose: int) -> Optional[dict]:
    """per_task's round ``task``: the spec's search, every trial from ``kept``; the best on the protocol's metric."""
    runs = _stored_at(spec.round_spec(task, round_dirname(task)), folder)
    folder.mkdir(parents=True)
    runs.to_yaml(folder / SPEC_FILE)
    tuner = _new_tuner(runs, folder, raw, tracking, verbose, None, **({"start": kept} if kept else {}))
    attach_callbacks(tuner, [snapshot_before_training(tuner), _TrialLedgerCallback(folder), *tracking.callbacks(runs)])
    tuner.fit()
    best = load_sweep(folder).best()
    return None if best is None else {"trial_id": best.trial_id, "values": runs.active(runs.decoded(best.params)),
                                      "value": best.last[runs.objective.metric]}


def _chf_round(spec: SweepSpec, task: int, folder: Path, kept: Optional[dict], raw, tracking: Tracking,
               verbose: int) -> Optional[dict]:
    """chf's round ``task`` (`sweeps.spec.Chf`): the maximal plasticity search over ``protocol.lr`` by
    fine-tuning from ``kept`` (``plasticity/``), then the stability decay at its lr in ``folder`` itself,
    stopped once the first attempt to pass is known. Task 0 (no penalty acts yet): the strategy's own lr
    search, in ``folder``, and its best."""
    p, metric = spec.protocol, spec.objective.metric
    at = {STRENGTH: p.strengths()[0]}
    if task == 0:
        runs = _phase(spec, task, folder, {"train.lr": p.lr}, at)
        _side_sweep(runs, _trainable(runs, raw, None, None), space.param_space(runs), verbose)
        best = load_sweep(folder).best()
        return None if best is None else {"trial_id": best.trial_id, "values": {"train.lr": best.params["train.lr"],
                                                                                **at}, "value": best.last[metric]}
    fine_tuning = {"clcore": {**kept["clcore"], "strategy": {}}, **{k: v for k, v in kept.items() if k != "clcore"}}
    plastic = _phase(spec, task, folder / PLASTICITY_DIR, {"train.lr": p.lr}, strategy={"name": "naive"})
    _side_sweep(plastic, _trainable(plastic, raw, None, None, start=fine_tuning), space.param_space(plastic), verbose)
    plasticity = load_sweep(folder / PLASTICITY_DIR).best()
    if plasticity is None:
        return None
    a_star, lr = plasticity.last[metric], plasticity.params["train.lr"]
    threshold = (1 - p.drop) * a_star
    runs = _phase(spec, task, folder, {STRENGTH: p.strengths()}, {"train.lr": lr})
    if verbose:
        print(f"clsweep: task {task}: fine-tuning reaches {a_star:.4f} at lr {lr:g}; lambda from {p.start:g} until "
              f"{metric} >= {threshold:.4f}", flush=True)
    _side_sweep(runs, _trainable(runs, raw, None, None, start=kept), space.param_space(runs), verbose,
                stop=_FirstToPass(p.strengths(), metric, threshold))
    ledger = TrialLedger(folder)  # Ray's stop ends the running attempts without telling the callbacks
    for trial in load_sweep(folder).trials:
        if not trial.outcome.ended:
            ledger.trial_ended(trial.trial_id, TERMINATED, trial.params, 0)
    attempts = {t.params[STRENGTH]: t for t in load_sweep(folder).trials if t.outcome == Outcome.COMPLETE}
    tried = [attempts[value] for value in p.strengths() if value in attempts]
    if not tried:
        return None
    chosen = next((t for t in tried if t.last[metric] >= threshold), tried[-1])
    return {"trial_id": chosen.trial_id, "values": {"train.lr": lr, STRENGTH: chosen.params[STRENGTH]},
            "value": chosen.last[metric], "a_star": a_star, "lr_trial_id": plasticity.trial_id,
            "attempt": p.strengths().index(chosen.params[STRENGTH]), "passed": chosen.last[metric] >= threshold}


def _phase(spec: SweepSpec, task: int, folder: Path, grid: dict[str, list], fixed: Optional[dict] = None,
           strategy: Optional[dict] = None) -> SweepSpec:
    """A grid over ``grid`` on round ``task``'s base (``fixed`` set, the strategy replaced by ``strategy``),
    stored at ``folder``, every value at once as far as the cluster fits."""
    base = spec.round_spec(task, folder.name).base
    if strategy is not None:
        base["strategy"] = strategy
    for key, value in (fixed or {}).items():
        set_path(base, key, value)
    return _stored_at(spec.model_copy(update={
        "name": folder.name, "base": base, "protocol": EndOfTraining(name="end_of_training"),
        "search": {key: Values(dist="grid", values=values) for key, values in grid.items()},
        "algorithm": Algorithm(name="grid", num_samples=1, max_concurrent=spec.algorithm.max_concurrent)}), folder)


class _FirstToPass(tune.Stopper):
    """Stops chf's stability decay once its answer is known: an attempt has passed and every stronger one
    (tried before it in the sequential order) has failed. Later attempts still running are stopped, and
    those not started never start."""

    def __init__(self, strengths: list[float], metric: str, threshold: float):
        self.strengths, self.metric, self.threshold = strengths, metric, threshold
        self.passed: dict[int, bool] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = (result.get("config") or {}).get(STRENGTH)
        if value in self.strengths and self.metric in result:
            self.passed[self.strengths.index(value)] = result[self.metric] >= self.threshold
        return False

    def stop_all(self) -> bool:
        first = next((i for i, ok in sorted(self.passed.items()) if ok), None)
        return first is not None and all(i in self.passed for i in range(first))


def _kept_model(folder: Path, entry: dict) -> dict:
    """The checkpoint a round continues from: the newest of the trial the round before kept, with its
    clcore seconds set to 0 (a round's trial counts the task it trains itself)."""
    files = sorted((folder / trial_dirname(entry["trial_id"])).glob(f"{CHECKPOINT_DIRS}/{CHECKPOINT_FILE}"))
    if not files:
        raise FileNotFoundError(f"{folder}: trial {entry['trial_id']}, kept for task {entry['task']}, has no "
                                f"checkpoint left to continue from")
    import torch

    saved = torch.load(files[-1], weights_only=True)
    return {**saved, "clcore_seconds": 0.0}


def _evaluate_schedule(spec: SweepSpec, state: SweepState, raw, verbose: int) -> None:
    """per_task's and chf's evaluation: the schedule trained from scratch, every task seen, on ``protocol.seeds``
    fresh seeds, in parallel, a sweep of its own in ``<sweep>/evaluation`` (``evaluation_of: schedule``).
    One that did not finish starts again."""
    seeds = spec.evaluation_seeds
    runs_now = state.evaluation.trials if state.evaluation is not None else []
    if len(runs_now) == len(seeds) and all(t.outcome.ended for t in runs_now):
        return
    folder = state.path / EVALUATION_DIR
    shutil.rmtree(folder, ignore_errors=True)
    base = {**copy.deepcopy(spec.base), "schedule": [entry["values"] for entry in state.schedule]}
    runs = _stored_at(spec.model_copy(update={  # the schedule sets every searched value: its grid is the seeds
        "name": EVALUATION_DIR, "base": base, "protocol": EndOfTraining(name="end_of_training"),
        "search": {"seed": Values(dist="grid", values=seeds)}, "scheduler": Fifo(name="fifo"),
        "selection": Selection(), "algorithm": Algorithm(name="grid", num_samples=1,
                                                         max_concurrent=spec.algorithm.max_concurrent)}), folder)
    if verbose:
        print(f"clsweep: {spec.protocol_description}; the schedule on seeds {seeds}", flush=True)
    _side_sweep(runs, _trainable(runs, raw, None, None, _run_again, key=EVALUATION_OF, values={SCHEDULE: {}}),
                {EVALUATION_OF: tune.grid_search([SCHEDULE]), "seed": tune.grid_search(seeds)}, verbose)


def _finish(spec: SweepSpec, state: SweepState, path: Path, tracking: Tracking, started: float) -> SweepState:
    """After the last phase: prune the checkpoints, write ``summary.json`` and ``best_config.yaml``."""
    if not spec.storage.keep_ended:
        state.prune_checkpoints()
    state.wall_seconds = time.perf_counter() - started
    (path / SUMMARY_FILE).write_text(json.dumps(state.to_summary(), indent=2, default=str))
    chosen = state.chosen_config()
    if chosen is not None:
        chosen.to_yaml(path / BEST_CONFIG_FILE)
    tracking.sweep_finished(spec, state)
    return state


def _train_reference(spec: SweepSpec, path: Path, raw, verbose: int) -> Optional[dict]:
    """The ``reference`` every trial is measured against (``reference.json``): trained once, before the
    search, as a sweep of its own in ``<sweep>/reference`` (a grid over ``reference.lr``, every run to
    the end); a sweep that has it (a resume) reads it back. None without a reference."""
    if spec.reference.strategy is None:
        return None
    stored = read_reference(path)
    if stored is not None:
        return stored
    folder = path / REFERENCE_DIR
    shutil.rmtree(folder, ignore_errors=True)  # an unfinished reference phase starts again
    lrs = spec.reference_lrs()
    runs = _stored_at(spec.model_copy(update={
        "name": REFERENCE_DIR, "base": spec.reference_base(), "search": {"train.lr": Values(dist="grid", values=lrs)},
        "objective": Objective(mode="max"), "reference": ReferenceSpec(), "selection": Selection(),
        "scheduler": Fifo(name="fifo"),
        "algorithm": Algorithm(name="grid", num_samples=1, max_concurrent=spec.algorithm.max_concurrent)}), folder)
    if verbose:
        print(f"clsweep: reference {spec.reference.strategy} at lr {', '.join(f'{lr:g}' for lr in lrs)}", flush=True)
    _side_sweep(runs, _trainable(runs, raw, None, None), space.param_space(runs), verbose)
    stored = reference_from(load_sweep(folder))
    for checkpoint in folder.glob(f"{trial_dirname('*')}/{CHECKPOINT_DIRS}"):  # reference.json is what is read again
        shutil.rmtree(checkpoint, ignore_errors=True)
    (path / REFERENCE_FILE).write_text(json.dumps(stored, indent=2))
    return stored


def _run_finalists(spec: SweepSpec, state: SweepState, raw, verbose: int, reference: Optional[dict]) -> None:
    """The ``selection.finalists`` best complete trials, trained again on ``selection.seeds`` fresh
    seeds each, in parallel: a sweep of its own in ``<sweep>/finalists``, not tracked in MLflow as
    trials (the parent run and the finalists' trial runs get their means). A finalists phase that did
    not finish (the driver stopped) starts again from the beginning."""
    finalists = [t for t in state.ranked() if t.outcome == Outcome.COMPLETE][:spec.selection.finalists]
    folder = state.path / FINALISTS_DIR
    if state.finalists is not None and len(state.finalists.trials) == len(finalists) * spec.selection.seeds and all(
            t.outcome.ended for t in state.finalists.trials):
        return
    shutil.rmtree(folder, ignore_errors=True)
    if not finalists:
        return
    seeds = spec.finalist_seeds
    runs = _stored_at(spec.model_copy(update={"name": FINALISTS_DIR, "scheduler": Fifo(name="fifo"),
                                              "selection": Selection()}), folder)
    if verbose:
        print(f"clsweep: {len(finalists)} finalists, each on seeds {seeds}", flush=True)
    _side_sweep(runs, _trainable(runs, raw, None, reference, _run_again, key=FINALIST_OF,
                                 values={t.trial_id: t.params for t in finalists}),
                {FINALIST_OF: tune.grid_search([t.trial_id for t in finalists]), "seed": tune.grid_search(seeds)},
                verbose)


def _side_sweep(runs: SweepSpec, trainable, param_space: dict, verbose: int, stop=None) -> None:
    """``runs``, a FIFO spec stored inside the sweep's folder, as a sweep of its own (the reference runs,
    the finalists): every run to the end (or until ``stop``, a `tune.Stopper`, says), as many at a time
    as the search runs, each in its ledger."""
    folder = runs.experiment_path
    folder.mkdir(parents=True, exist_ok=True)  # (chf's decay: its round folder, which holds plasticity/ already)
    runs.to_yaml(folder / SPEC_FILE)
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=OBJECTIVE_ATTR, mode=runs.mode, reuse_actors=reuse_actors(),
                                    max_concurrent_trials=runs.algorithm.max_concurrent,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=runs.name, storage_path=runs.storage.path, verbose=min(verbose, 1), stop=stop,
            failure_config=tune.FailureConfig(max_failures=runs.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=runs.storage.checkpoints_to_keep),
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback()]))
    attach_callbacks(tuner, [_TrialLedgerCallback(folder)])
    tuner.fit()


def _evaluate(spec: SweepSpec, state: SweepState, raw, verbose: int, reference: Optional[dict]) -> None:
    """The protocol's evaluation: the chosen values (the best trial's, after finalists) trained on the
    evaluation stream (every task, or those after a prefix alone) on ``protocol.seeds`` fresh seeds, in
    parallel, a sweep of its own in ``<sweep>/evaluation``. One that did not finish, or that
    evaluated another trial, starts again."""
    best = state.best()
    seeds = spec.evaluation_seeds
    done = state.evaluation is not None and len(state.evaluation.trials) == len(seeds) and all(
        t.outcome.ended and t.params.get(EVALUATION_OF) == getattr(best, "trial_id", None) for t in state.evaluation.trials)
    folder = state.path / EVALUATION_DIR
    if done:
        return
    shutil.rmtree(folder, ignore_errors=True)
    if best is None:
        return
    base = copy.deepcopy(spec.base)
    base.setdefault("benchmark", {})["task_range"] = spec.evaluation_range
    runs = _stored_at(spec.model_copy(update={
        "name": EVALUATION_DIR, "base": base, "protocol": EndOfTraining(name="end_of_training"),
        "scheduler": Fifo(name="fifo"), "selection": Selection()}), folder)
    target = runs.example_config().benchmark
    if raw is None or raw.key != raw_key(target):  # two_phase: the target's data, loaded now
        raw = load_raw(target)
    if verbose:
        print(f"clsweep: {spec.protocol_description}; trial {best.trial_id} on seeds {seeds}", flush=True)
    _side_sweep(runs, _trainable(runs, raw, None, reference, _run_again, key=EVALUATION_OF,
                                 values={best.trial_id: best.params}),
                {EVALUATION_OF: tune.grid_search([best.trial_id]), "seed": tune.grid_search(seeds)}, verbose)


def _run_again(config: dict, *, spec: SweepSpec, raw, key: str, values: dict[str, dict], trial_logger,
               reference) -> None:
    """A search trial's values again on a fresh seed (a finalist, an evaluation run): ``config`` is
    ``{key: <search trial id>, seed: <seed>}``."""
    run_trial({**values[config[key]], key: config[key], "seed": config["seed"]}, spec=spec, raw=raw,
              trial_logger=trial_logger, reference=reference)


def _reporter(spec: SweepSpec):
    return BestOfCompleteReporter(
        spec.n_tasks, TIME_ATTR,
        metric_columns={TIME_ATTR: "tasks", spec.objective.metric: spec.objective.metric,
                        "epochs_trained": "epochs"},
        parameter_columns=list(spec.search), max_report_frequency=15, sort_by_metric=False,
        max_progress_rows=40, max_error_rows=10)


class _TrialLedgerCallback(tune.Callback):
    """Every trial's start and end, in the sweep's own ledger (``trials.jsonl``, see `sweeps.storage`)."""

    def __init__(self, experiment_dir: Path):
        self.ledger = TrialLedger(experiment_dir)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.ledger.trial_started(trial.trial_id, _jsonable(trial.config))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ledger.trial_ended(trial.trial_id, TERMINATED, _jsonable(trial.config), trial.num_failures)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ledger.trial_ended(trial.trial_id, ERROR, _jsonable(trial.config), trial.num_failures,
                                *trial_failure(trial))


def trial_failure(trial) -> tuple[str, str]:
    """A failed Ray trial's error line and its cause (`failure_cause`): for a lost process, the Ray
    exception's name and first line (Ray follows it with a paragraph of advice); else `trial_error`."""
    error = _pickled_error(trial)
    cause = failure_cause(error)
    if cause == TRAINING:
        return trial_error(trial), cause
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}", cause


def failure_cause(error: Optional[BaseException]) -> str:
    """`INFRASTRUCTURE` for an error Ray raised because a process or node went away (a Ray error other
    than a task's own, also as a task error's cause: a lost actor or node, a crashed worker, Ray's
    memory monitor, a lost object); `TRAINING` for what the trial's code raised (a diverged loss, an
    invalid config, a bug) and for an error that could not be read back."""
    from ray import exceptions

    if isinstance(error, exceptions.RayTaskError):
        error = error.cause
    lost = isinstance(error, exceptions.RayError) and not isinstance(error, exceptions.RayTaskError)
    return INFRASTRUCTURE if lost else TRAINING


def _pickled_error(trial) -> Optional[BaseException]:
    """The exception Ray pickled into the driver's local trial folder at the trial's last failure (Ray's
    own file: ``Trial.handle_error`` writes it for task and actor errors), or None."""
    import cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # noqa: BLE001 - none written (another kind of error), or unreadable
        return None


def trial_error(trial) -> str:
    """The last line naming an exception (``module.SomeError: message``; else the last line) of a failed
    Ray trial's latest error, from the error text Ray appends to in the driver's local trial folder (its
    copy in storage is synced later, and can still hold an earlier attempt's error)."""
    text = ""
    try:
        local = trial.error_file and Path(trial.error_file)
        text = local.read_text() if local and local.exists() else str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - no error file
        pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b[^ ]*:", line)]
    return (named or lines or ["trial failed"])[-1]


def _jsonable(config: dict) -> dict:
    """A trial's Ray config with plain JSON values (numpy scalars become Python numbers)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(config).items()}


# ------------------------------------------------------------------------------ search and schedulers
def search_algorithm(spec: SweepSpec):
    """OptunaSearch (TPE unless the spec says random) in a concurrency limit, or Ray's random/grid generator."""
    a = spec.algorithm
    points = space.points_to_evaluate(spec)
    if a.name == "optuna":
        import optuna

        sampler = (optuna.samplers.RandomSampler(seed=a.seed) if a.sampler == "random" else
                   optuna.samplers.TPESampler(seed=a.seed, **({"n_startup_trials": a.n_startup_trials}
                                                              if a.n_startup_trials else {})))
        by_run = {"space": space.define_by_run(spec), "metric": OBJECTIVE_ATTR, "mode": spec.mode} \
            if space.uses_define_by_run(spec) else {}  # conditional keys: Optuna asks for them by run
        searcher = _OptunaSearch(n_tasks=spec.n_tasks, sampler=sampler, points_to_evaluate=points, **by_run)
        return ConcurrencyLimiter(searcher, a.max_concurrent) if a.max_concurrent else searcher
    return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=a.max_concurrent or 0,
                                 random_state=a.seed)


def scheduler(spec: SweepSpec):
    """The spec's trial scheduler, Ray's with `ray_private.Recorded` (a snapshot before each trial trains,
    its state refilled from the trials' records on resume); its time is tasks seen, and a trial ends
    after ``n_tasks``."""
    s, n_tasks = spec.scheduler, spec.n_tasks
    if s.name == "asha":
        return ray_private.Asha(time_attr=TIME_ATTR, max_t=n_tasks, grace_period=s.grace_period,
                                reduction_factor=s.reduction_factor, brackets=s.brackets)
    if s.name == "hyperband":
        return ray_private.HyperBand(time_attr=TIME_ATTR, max_t=n_tasks, reduction_factor=s.reduction_factor)
    if s.name == "median":
        return ray_private.Median(time_attr=TIME_ATTR, grace_period=s.grace_period,
                                  min_samples_required=s.min_samples_required)
    if s.name == "pbt":
        return ray_private.Pbt(
            time_attr=TIME_ATTR, perturbation_interval=s.perturbation_interval, burn_in_period=s.burn_in_period,
            hyperparam_mutations=space.pbt_mutations(spec), quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability, custom_explore_fn=space.ClipToSpace(spec),
            synch=True)  # compare trials at the same number of tasks seen: scores after k and k+1 tasks do not compare
    return ray_private.Fifo()


class _OptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna "pruned" for a trial that ended before its last task.

    A trial a scheduler stopped early was scored on fewer tasks, and a trial that failed after
    some tasks (a NaN loss with a huge lambda, say) has no final score at all. Ray's OptunaSearch
    would tell Optuna the first one is complete with its early score and the second one failed,
    which TPE ignores, so it would go on proposing lambdas that diverge. Pruned, both rank below
    every complete trial, by how many tasks they got through (Optuna has their per-task values).
    Ray's OptunaSearch tells "pruned" for a result without the metric; that is how it is done here.
    """

    def __init__(self, *, n_tasks: int, **kwargs):
        super().__init__(**kwargs)
        self.n_tasks = n_tasks
        self.reported: set[str] = set()  # trials with at least one result

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.reported.add(trial_id)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if error and trial_id in self.reported:
            result, error = None, False
        elif result and not error and result.get(TIME_ATTR, self.n_tasks) < self.n_tasks:
            result = {k: v for k, v in result.items() if k != self.metric}
        self.reported.discard(trial_id)
        super().on_trial_complete(trial_id, result, error)


__all__ = ["run_sweep", "resume_sweep", "load_sweep", "trial_failure", "failure_cause", "init_ray", "ray_session",
           "Tracking", "SweepState", "TrialRecord",
           "SweepExistsError", "search_algorithm", "scheduler", "trials_that_fit", "SPEC_FILE", "SUMMARY_FILE", "BEST_CONFIG_FILE"]
