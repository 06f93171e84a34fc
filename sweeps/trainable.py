"""One trial: its Ray config (the searched values) -> ExperimentConfig -> `clcore.run`.

After every task the trial reports to Ray Tune (`ray.tune.report`):

- every metric clcore computed (``val_average_accuracy``, ``tasks_seen`` — the schedulers' time
  attribute — ``epochs_trained``, ...), plus ``n_tasks``, the ``val_matrix`` and ``test_matrix``
  so far, ``clcore_seconds`` (time spent inside ``clcore.run`` by this trial, reporting left
  out), ``node_id`` and ``node_ip`` (the Ray node running the trial; MLflow tags its run with them)
  and ``data_shared`` (whether the trial used the sweep's shared dataset);
- the same metrics, with the trial's config, as one line of ``tasks.jsonl`` in the trial's storage
  folder, written before the report: the record `sweeps.runner.load_sweep` reads (Ray's own
  ``result.json`` is a copy the driver syncs now and then, and PBT's restores can roll it back);
- a checkpoint of model, optimiser, strategy state and RNG (`TaskReport.checkpoint`), so that
  ASHA, HyperBand and median stopping can stop the trial after any task, PBT can continue another
  trial from it with a mutated config, and a retried or resumed trial continues after its last
  task instead of starting over.

Where a trial continues from: the checkpoint Ray hands it (a retry, a resumed sweep, PBT's
exploit), unless that is the trial's own and its storage folder holds a newer one of its own. Ray's
experiment state is a periodic snapshot (the runner has it written when each trial starts, so every
trial that reports is in it, but its later results may not be), so a driver killed between two
snapshots would otherwise make a resumed trial train again tasks it had already reported. A trial
with nothing left to train reports its last recorded task again and ends: one the ledger says
ended (the driver died before Ray's snapshot had its end: a trial ASHA stopped stays stopped), or
one continued from its own checkpoint taken after the last task. Continued from another trial's
such checkpoint (PBT copied a trial that had just finished), it reports that final state as its own.

A trial whose loss becomes NaN (`TrainingDivergedError`) or whose config is invalid
(`ConfigError`) raises, so Ray marks it ERROR with that reason and the sweep goes on. Both
failures are deterministic: the trial writes its reason into its storage folder, and a retry
(``max_failures``, meant for crashes and lost nodes) raises it again at once instead of repeating
the work. Storage is a local or shared path (`SweepSpec.storage`); where the folder cannot be
written, the retry simply runs again.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

import clcore
from clcore.config import ConfigError, ExperimentConfig
from clcore.data import RawData, raw_key
from clcore.metrics import Reference
from clcore.train import TaskReport, TrainingDivergedError
from sweeps.spec import OBJECTIVE_ATTR, Objective, SweepSpec
from sweeps.storage import CHECKPOINT_DIRS, FAILURE_FILE, TASKS_FILE, TERMINATED, ledger_end, task_history, trial_dirname

CHECKPOINT_FILE = "checkpoint.pt"  # in each checkpoint_* folder: {"clcore", "clcore_seconds", "trial_id"}
RECORD_ONLY = ("trial_id", "config", "timestamp")  # in a tasks.jsonl line beside what the trial reported

# (trial_id, trial_name, config) -> a function called with every result the trial reports.
TrialLoggerFactory = Callable[[str, str, ExperimentConfig], Callable[[dict], None]]


class TrialFailedError(RuntimeError):
    """An earlier attempt of this trial failed deterministically; retrying would fail the same way."""


def run_trial(params: dict, *, spec: SweepSpec, raw: Optional[RawData] = None,
              trial_logger: Optional[TrialLoggerFactory] = None, reference: Optional[Reference] = None,
              start: Optional[dict] = None) -> None:
    """Ray Tune function trainable (bind ``spec``, ``raw``, ``trial_logger`` and the sweep's
    ``reference`` a*_k with `tune.with_parameters`). ``start``: a checkpoint (this module's
    `CHECKPOINT_FILE` contents) a trial with none of its own continues from: per_task's kept model."""
    import ray
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint on the console
    context = tune.get_context()
    trial_id = context.get_trial_id()
    folder = spec.experiment_path / trial_dirname(trial_id)
    if (folder / FAILURE_FILE).exists():
        reason = json.loads((folder / FAILURE_FILE).read_text())["reason"]
        raise TrialFailedError(f"{reason} (not retried: this failure is deterministic)")
    if ledger_end(spec.experiment_path, trial_id) == TERMINATED:  # it ended after Ray's last snapshot
        return _report_again(folder)
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    try:
        config = spec.trial_config(params)
        shared = raw is not None and raw.key == raw_key(config.benchmark)  # never another benchmark's data
        saved = _checkpoint_to_continue(tune.get_checkpoint(), folder, trial_id) or start
        log = trial_logger(trial_id, context.get_trial_name(), config) if trial_logger else None
        where = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}
        reporter = _TaskReporter(folder / TASKS_FILE, trial_id, dict(params), saved["clcore_seconds"] if saved else 0.0,
                                 log, {**where, "data_shared": shared}, spec.objective, reference)
        resume_from = saved["clcore"] if saved else None
        n_tasks = config.benchmark.tasks_run
        if resume_from is not None and resume_from["next_task"] >= n_tasks:
            if saved["trial_id"] != trial_id:
                reporter(TaskReport(n_tasks - 1, n_tasks, dict(resume_from["history"][-1]), resume_from["val_matrix"],
                                    resume_from["test_matrix"], lambda: resume_from))
                return
            return _report_again(folder)
        reporter.started = time.perf_counter()
        clcore.run(config, [reporter], resume_from=resume_from, raw=raw if shared else None, reference=reference)
    except (TrainingDivergedError, ConfigError) as error:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / FAILURE_FILE).write_text(json.dumps({"reason": f"{type(error).__name__}: {error}"}))
        except OSError:
            pass
        raise


def _report_again(folder: Path) -> None:
    """A trial with nothing left to train reports its last recorded task again (no checkpoint, no
    line in ``tasks.jsonl``), so that Ray, its scheduler and its searcher end it on its final result
    rather than on the older one Ray's snapshot restored."""
    from ray import tune

    history = task_history(folder)
    if history:
        tune.report({k: v for k, v in history[-1].items() if k not in RECORD_ONLY})


def _checkpoint_to_continue(given, folder: Path, trial_id: str) -> Optional[dict]:
    """Ray's checkpoint, or this trial's newest in ``folder`` when Ray's is its own and older (see above)."""
    saved = None
    if given is not None:
        with given.as_directory() as path:  # empty: put back by a resume, for a trial restarted from scratch
            file = Path(path) / CHECKPOINT_FILE
            saved = torch.load(file, weights_only=True) if file.exists() else None
        if saved is not None and saved["trial_id"] != trial_id:
            return saved  # another trial's: PBT's choice
    reached = saved["clcore"]["next_task"] if saved else 0
    for file in sorted(folder.glob(f"{CHECKPOINT_DIRS}/{CHECKPOINT_FILE}"), reverse=True):
        try:
            newest = torch.load(file, weights_only=True)
        except Exception:  # noqa: BLE001 - half written when the driver died: try the one before
            continue
        if newest["trial_id"] == trial_id and newest["clcore"]["next_task"] > reached:
            return newest
        break
    return saved


class _TaskReporter:
    """clcore callback: report one task's metrics and checkpoint to Ray Tune."""

    def __init__(self, tasks_file: Path, trial_id: str, params: dict, clcore_seconds: float,
                 log: Optional[Callable[[dict], None]], extra: dict, objective: Objective,
                 reference: Optional[Reference]):
        self.tasks_file = tasks_file
        self.trial_id = trial_id
        self.params = params
        self.clcore_seconds_before = clcore_seconds  # from earlier attempts (restored checkpoint)
        self.log = log
        self.extra = extra
        self.objective = objective
        self.a_star = reference.val if reference is not None else None
        self.started = time.perf_counter()  # when clcore.run was called
        self.reporting = 0.0  # seconds spent in this callback so far

    def __call__(self, report: TaskReport) -> None:
        from ray import tune

        entered = time.perf_counter()
        clcore_seconds = self.clcore_seconds_before + (entered - self.started - self.reporting)
        metrics = {**report.metrics, "n_tasks": report.n_tasks,
                   "val_matrix": [list(row) for row in report.val_matrix],
                   "test_matrix": [list(row) for row in report.test_matrix],
                   "clcore_seconds": clcore_seconds, **self.extra}
        metrics[OBJECTIVE_ATTR] = self.objective.ranked(metrics[self.objective.metric], metrics["val_matrix"],
                                                       self.a_star)
        if self.log is not None:
            self.log(metrics)
        self.tasks_file.parent.mkdir(parents=True, exist_ok=True)
        with self.tasks_file.open("a") as f:
            record = dict(zip(RECORD_ONLY, (self.trial_id, self.params, time.time())))
            f.write(json.dumps({**metrics, **record}) + "\n")
        with tempfile.TemporaryDirectory(prefix="clsweep-ckpt-") as folder:
            torch.save({"clcore": report.checkpoint(), "clcore_seconds": clcore_seconds, "trial_id": self.trial_id},
                       Path(folder) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        self.reporting += time.perf_counter() - entered


__all__ = ["run_trial", "TrialFailedError", "TrialLoggerFactory", "CHECKPOINT_FILE"]
