"""What a sweep's storage folder holds, and reading it back: no Ray, no pickle.

A sweep lives in ``<storage.path>/<name>``. Next to Ray's own files (its experiment snapshots and
``tuner.pkl``, which only `sweeps.runner.resume_sweep` reads, through Ray) the project keeps its own
record, in JSON only:

    sweep.yaml          the validated spec, overrides applied (written before Ray starts)
    trials.jsonl        the driver's ledger, one line per event: a trial started (its searched values),
                        or ended (Ray's status, error line, failures, wall time from its first start)
    brackets.jsonl      with ``scheduler: hyperband``: each trial's bracket (band, bracket index) as it
                        joined, what a resumed HyperBand puts it back into (Ray keeps no scheduler state)
    trial_<id>/tasks.jsonl  written by the trial itself, one line per task (metrics, accuracy
                        matrices, node, the trial's config at that task)
    trial_<id>/checkpoint_*/  Ray's task checkpoints: the newest (``storage.checkpoints_to_keep``,
                        default 2) while the trial runs; when the sweep ends, only failed and
                        unfinished trials keep theirs (a resume continues them) and the best trial
                        its newest (`prune_checkpoints`; ``storage.keep_ended`` keeps all)
    reference/          with ``reference``: the reference runs (one per ``reference.lr``), a sweep folder
                        of its own, trained before the search
    reference.json      a*_k per task (validation and test) and the reference run each came from:
                        what every trial is measured against (`Reference`)
    evaluation/         with ``protocol: prefix``: the chosen values trained on the evaluation stream
                        on ``protocol.seeds`` fresh seeds, a sweep folder of its own (``evaluation_of``, ``seed``)
    finalists/          with ``selection.finalists``: the finalists trained again on fresh seeds, a
                        sweep folder of its own (its trials' Ray config: ``finalist_of``, ``seed``)
    rounds/task_<t>/    with ``protocol: per_task`` or ``chf``: round t, a sweep folder of its own (its trials
                        train task t from the model round t - 1 kept, seeing tasks 0..t alone); chf's
                        holds the stability decay's attempts, and ``plasticity/`` its lr search
    schedule.json       with ``per_task`` or ``chf``: per finished round, the trial it kept, its values and
                        score (`read_schedule`); a resume starts at the first round not in it
    summary.json, best_config.yaml   after the sweep

`load_sweep` rebuilds every trial from these files alone, so ``clsweep status``, ``best`` and
``sync`` can be pointed at a folder from anywhere without running code from it: Ray's files are
pickles (unpickling a crafted one runs its code), and are never opened here. A trial is known from
its first start in the ledger or its first task in ``tasks.jsonl``, whichever comes first.
"""

from __future__ import annotations

import enum
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clcore.config import ExperimentConfig
from clcore.metrics import Reference
from sweeps.spec import EndOfTraining, Rounds, SweepSpec

SPEC_FILE = "sweep.yaml"
TRIALS_FILE = "trials.jsonl"
SUMMARY_FILE = "summary.json"
BEST_CONFIG_FILE = "best_config.yaml"
TASKS_FILE = "tasks.jsonl"  # in each trial's folder: one line per reported task
FAILURE_FILE = "clsweep_failure.json"  # in a trial's folder; written by a deterministic failure
BRACKETS_FILE = "brackets.jsonl"  # HyperBand's bracket of each trial (`record_bracket`)
TIME_ATTR = "tasks_seen"  # the schedulers' time axis
CHECKPOINT_DIRS = "checkpoint_*"  # Ray's checkpoint folders in a trial's folder
FINALISTS_DIR = "finalists"  # in the sweep's folder: the finalists' runs on fresh seeds, a sweep folder itself
EVALUATION_DIR = "evaluation"  # in the sweep's folder: the protocol's evaluation runs, a sweep folder itself
EVALUATION_OF = "evaluation_of"  # an evaluation run's Ray config: {evaluation_of: <search trial id>, seed: <fresh seed>}
REFERENCE_DIR = "reference"  # in the sweep's folder: the reference runs, a sweep folder itself
REFERENCE_FILE = "reference.json"  # in the sweep's folder: a*_k per task, from the reference runs
FINALIST_OF = "finalist_of"  # a finalist run's Ray config: {finalist_of: <search trial id>, seed: <fresh seed>}
ROUNDS_DIR = "rounds"  # in a per_task or chf sweep's folder: one sweep folder per round, `round_dirname`
PLASTICITY_DIR = "plasticity"  # in a chf round's folder: its maximal plasticity search, a sweep folder itself
SCHEDULE_FILE = "schedule.json"  # in a per_task or chf sweep's folder: the trial each finished round kept
SCHEDULE = "schedule"  # a per_task or chf evaluation run's ``evaluation_of``: the schedule, not one trial

# What the best trial's score bought, in the summary beside it: forgetting and plasticity (with a
# reference, intransigence and the lowest share of the reference's a*_k too).
BOUGHT = ("average_accuracy", "forgetting", "accuracy_current_task", "min_accuracy_current_task", "intransigence",
          "min_plasticity_ratio")

# Ray's trial statuses as the ledger records them.
TERMINATED, ERROR, RUNNING, PENDING = "TERMINATED", "ERROR", "RUNNING", "PENDING"
# Why a failed trial failed, as the ledger records it: its own training raised (a diverged loss, an
# invalid config, a bug: the same config fails the same way again), or the machine under it went away
# (a lost node, a killed worker process, Ray's memory monitor: it would run if tried again). A ledger
# written before causes were recorded has none (None): it counts as infrastructure, as everything was then retried.
TRAINING, INFRASTRUCTURE = "training", "infrastructure"


class Outcome(str, enum.Enum):
    """How a trial ended, or that it has not: the one vocabulary of ``clsweep status``, the summary,
    the plots and MLflow (where `tag` is the word the ``clsweep.status`` tag holds)."""

    COMPLETE = "complete"            # saw every task
    REJECTED = "rejected"            # saw every task, but broke a requirement of the objective (objective.require)
    STOPPED_EARLY = "stopped early"  # a scheduler stopped it after fewer tasks
    FAILED = "failed"
    RUNNING = "running"
    PENDING = "pending"

    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def ended(self) -> bool:
        return self in (Outcome.COMPLETE, Outcome.REJECTED, Outcome.STOPPED_EARLY, Outcome.FAILED)

    @property
    def tag(self) -> str:
        """The ``clsweep.status`` tag's word (as stores written by earlier versions hold it)."""
        return {"complete": "finished", "stopped early": "stopped_early", "pending": "running"}.get(self.value,
                                                                                                   self.value)


def round_dirname(task: int) -> str:
    """A per_task or chf round's folder under ``rounds/``: the task it trains."""
    return f"task_{task}"


def read_schedule(path: str | Path) -> list[dict]:
    """A per_task or chf sweep's ``schedule.json``: one entry per finished round, in task order,
    ``{task, trial_id, values, value}`` (``values``: what the kept trial trained task t with; chf adds
    ``a_star``, ``lr_trial_id``, ``attempt`` and ``passed``)."""
    file = Path(path) / SCHEDULE_FILE
    return json.loads(file.read_text()) if file.exists() else []


def write_schedule(path: str | Path, schedule: list[dict]) -> None:
    file = Path(path) / SCHEDULE_FILE
    partial = file.with_suffix(".partial")
    partial.write_text(json.dumps(schedule, indent=2))
    partial.replace(file)  # whole or not at all: a driver killed while writing leaves the old one


def trial_dirname(trial_id: str) -> str:
    """A trial's folder in the sweep's storage."""
    return f"trial_{trial_id}"


@dataclass
class TrialRecord:
    """One trial as storage keeps it."""

    trial_id: str
    status: str  # Ray's: PENDING, RUNNING, TERMINATED or ERROR (RUNNING too for one whose driver died)
    params: dict[str, Any]  # the searched values (after PBT's last mutation)
    history: list[dict]  # the result reported after each task, in task order
    path: str  # the trial's folder
    n_tasks: int
    error: Optional[str] = None  # the last line of the error, for a failed trial
    num_failures: int = 0
    wall_seconds: Optional[float] = None  # on the driver: first start to end
    broken: Optional[str] = None  # the objective's first requirement it broke, and when (`Objective.broken`)
    cause: Optional[str] = None  # a failed trial's: TRAINING or INFRASTRUCTURE (None in an older ledger)

    @property
    def lost(self) -> bool:
        """Failed for infrastructure rather than its own training: ``clsweep resume --resume-errored``
        continues it, ``--restart-errored`` reruns it from scratch."""
        return self.outcome == Outcome.FAILED and self.cause != TRAINING

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def tasks_seen(self) -> int:
        return int(self.last.get(TIME_ATTR, 0))

    @property
    def outcome(self) -> Outcome:
        if self.status == ERROR:
            return Outcome.FAILED
        if self.status == TERMINATED:
            if self.tasks_seen < self.n_tasks:
                return Outcome.STOPPED_EARLY
            return Outcome.COMPLETE if self.broken is None else Outcome.REJECTED
        return Outcome.PENDING if self.status == PENDING and not self.history else Outcome.RUNNING

    @property
    def epochs_trained(self) -> int:
        return int(self.last.get("epochs_trained", 0))


@dataclass
class SweepState:
    spec: SweepSpec
    path: Path
    trials: list[TrialRecord] = field(default_factory=list)
    wall_seconds: Optional[float] = None  # of the last run or resume that ended (its summary.json)
    finalists: Optional["SweepState"] = None  # the finalists' runs on fresh seeds (``selection.finalists``)
    reference: Optional[dict] = None  # ``reference.json`` (`reference_from`): a*_k per task, once trained
    evaluation: Optional["SweepState"] = None  # the protocol's evaluation runs of the chosen values
    rounds: list["SweepState"] = field(default_factory=list)  # per_task, chf: round t's runs, by task
    # chf: plasticity[t], round t's maximal plasticity search (None in round 0, and in every per_task round);
    # one longer than rounds while a round's search has run and its decay has not begun
    plasticity: list[Optional["SweepState"]] = field(default_factory=list)
    schedule: list[dict] = field(default_factory=list)  # per_task, chf: ``schedule.json``, the finished rounds

    @property
    def schedule_complete(self) -> bool:
        """per_task, chf: every round has kept its trial (``schedule.json`` names every task)."""
        return len(self.schedule) == self.spec.n_tasks

    @property
    def finished(self) -> bool:
        """Every trial of every phase (a round protocol's: every round's) ended, and a round protocol has
        its whole schedule: a sweep `clsweep compare` reads back as it is and MLflow closes as FINISHED."""
        trials = [t for phase in (self, *self.rounds) for t in phase.trials]
        return bool(trials) and all(t.outcome.ended for t in trials) and (
            not isinstance(self.spec.protocol, Rounds) or self.schedule_complete)

    def chosen_config(self) -> Optional[ExperimentConfig]:
        """What the sweep selected, as it is to be trained (``best_config.yaml``): the best trial's config,
        or with a protocol that evaluates elsewhere (``prefix``, ``two_phase``) its evaluation config on the
        first evaluation seed (that run again); with ``per_task`` or ``chf`` the schedule on that seed,
        once every round has finished."""
        if isinstance(self.spec.protocol, Rounds):
            if not self.schedule_complete:
                return None
            return self.spec.schedule_config([entry["values"] for entry in self.schedule],
                                             self.spec.evaluation_seeds[0])
        best = self.best()
        if best is None:
            return None
        if not isinstance(self.spec.protocol, EndOfTraining):
            return self.spec.evaluation_config(best.params, self.spec.evaluation_seeds[0])
        return self.trial_config(best)

    def cost(self) -> dict:
        """What the sweep trained, every phase together (the reference, the search, finalists,
        evaluation): ``task_trainings`` (tasks trained, summed over runs) and ``clcore_seconds`` (time
        inside clcore.run, summed over runs: CPU or GPU time of the trials, not wall time)."""
        phases = [self, self.finalists, self.evaluation, *self.rounds, *self.plasticity]  # (None: skipped)
        if (self.path / REFERENCE_DIR / SPEC_FILE).exists():
            phases.append(load_sweep(self.path / REFERENCE_DIR))
        runs = [t for phase in phases if phase is not None for t in phase.trials]
        # the tasks each run trained itself (a per_task round's trial continued from task t; its record starts there)
        return {"task_trainings": sum(len(t.history) for t in runs),
                "clcore_seconds": sum(t.last.get("clcore_seconds") or 0.0 for t in runs)}

    def evaluation_row(self) -> Optional[dict]:
        """The protocol's evaluation of the chosen values: which trial, the seeds, and per metric of
        `BOUGHT` (test and validation) the value on each seed, mean and std; None before it ran."""
        runs = [r for r in (self.evaluation.trials if self.evaluation else []) if r.outcome.ended and r.history]
        if not runs:
            return None
        metrics = {}
        for split in ("test", "val"):
            for name in BOUGHT:
                values = [r.last.get(f"{split}_{name}") for r in runs]
                if all(_finite(v) for v in values):
                    metrics[f"{split}_{name}"] = {"values": values, "mean": statistics.fmean(values),
                                                  "std": statistics.pstdev(values)}
        return {"trial_id": runs[0].params[EVALUATION_OF], "seeds": [r.params["seed"] for r in runs],
                "outcomes": [r.outcome for r in runs], "metrics": metrics}

    def finalist_scores(self) -> dict[str, list[float]]:
        """Search trial id -> its objective on each fresh seed, for finalists whose every seed's run
        completed and kept the objective's requirements."""
        if self.finalists is None:
            return {}
        metric, scores = self.spec.objective.metric, {}
        for run in self.finalists.trials:
            scores.setdefault(run.params[FINALIST_OF], []).append(
                run.last.get(metric) if run.outcome == Outcome.COMPLETE else None)
        return {trial_id: values for trial_id, values in scores.items()
                if len(values) == self.spec.selection.seeds and all(_finite(v) for v in values)}

    def ranked(self) -> list[TrialRecord]:
        """Complete trials best first, then the others by tasks seen: only complete trials' scores compare
        (a score after 2 of 5 tasks averages over fewer tasks)."""
        metric = self.spec.objective.metric
        sign = -1 if self.spec.mode == "max" else 1
        done = [t for t in self.trials if t.outcome == Outcome.COMPLETE and _finite(t.last.get(metric))]
        rest = [t for t in self.trials if t not in done]
        return (sorted(done, key=lambda t: sign * t.last[metric]) +
                sorted(rest, key=lambda t: (-t.tasks_seen, t.trial_id)))

    def best(self) -> Optional[TrialRecord]:
        """The complete trial with the best objective (None while no trial is complete); with finalists,
        the finalist with the best mean objective over its fresh seeds."""
        scores = self.finalist_scores()
        if scores:
            sign = 1 if self.spec.mode == "max" else -1
            return self.trial(max(scores, key=lambda t: (sign * statistics.fmean(scores[t]), t)))
        ranked = self.ranked()
        return ranked[0] if ranked and ranked[0].outcome == Outcome.COMPLETE and \
            _finite(ranked[0].last.get(self.spec.objective.metric)) else None

    def finalist_rows(self) -> list[dict]:
        """Each finalist: its fresh seeds, objective on each, mean, std and its score in the search."""
        seeds = self.spec.finalist_seeds
        return [{"trial_id": t, "seeds": seeds, "values": v, "mean": statistics.fmean(v), "std": statistics.pstdev(v),
                 "search_value": self.trial(t).last.get(self.spec.objective.metric)}
                for t, v in self.finalist_scores().items()]

    def trial(self, trial_id: str) -> TrialRecord:
        return next(t for t in self.trials if t.trial_id == trial_id)

    def lost(self) -> list[TrialRecord]:
        """The trials that failed for infrastructure (`TrialRecord.lost`)."""
        return [t for t in self.trials if t.lost]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for trial in self.trials:
            out[trial.outcome] = out.get(trial.outcome, 0) + 1
        return out

    def trial_config(self, trial: TrialRecord) -> ExperimentConfig:
        return self.spec.trial_config(trial.params)

    def to_summary(self) -> dict:
        best = self.best()
        return {
            "name": self.spec.name, "path": str(self.path), "objective": self.spec.objective.metric,
            "mode": self.spec.mode, "wall_seconds": self.wall_seconds, "counts": self.counts(),
            "finalists": self.finalist_rows(), "reference": self.reference,
            "protocol": self.spec.protocol.name, "evaluation": self.evaluation_row(), "cost": self.cost(),
            **({"schedule": self.schedule, "rounds": [r.counts() for r in self.rounds]}
               if isinstance(self.spec.protocol, Rounds) else {}),
            "storage_bytes": folder_bytes(self.path),
            "best_trial": None if best is None else {
                "trial_id": best.trial_id, "value": best.last[self.spec.objective.metric], "params": best.params,
                "path": best.path, "val_matrix": best.last.get("val_matrix"),
                "test_matrix": best.last.get("test_matrix"),
                "bought": {f"{split}_{name}": best.last[f"{split}_{name}"] for split in ("val", "test") for name in BOUGHT
                           if f"{split}_{name}" in best.last}},
            "trials": [{"trial_id": t.trial_id, "status": t.status, "outcome": t.outcome, "params": t.params,
                        "tasks_seen": t.tasks_seen, "epochs_trained": t.epochs_trained,
                        "value": t.last.get(self.spec.objective.metric), "error": t.error, "cause": t.cause,
                        "wall_seconds": t.wall_seconds, "clcore_seconds": t.last.get("clcore_seconds"),
                        "broken": t.broken,
                        "node_id": t.last.get("node_id"), "path": t.path} for t in self.trials],
        }


    def prune_checkpoints(self, keep: set[str] = frozenset()) -> int:
        """Delete the checkpoints nothing will read again: those of trials that ended (complete or
        stopped early; PBT copies only from running trials, and a resume does not rerun ended ones),
        except the best trial's newest, kept for whoever wants its weights. Failed and unfinished trials
        keep theirs: ``clsweep resume`` continues them. The finalists' runs likewise, and each round's, which
        keeps the newest of the trial it kept (``keep``: the schedule's) too. Returns the bytes freed."""
        best = self.best()
        kept = {entry["trial_id"] for entry in self.schedule}
        freed = sum(runs.prune_checkpoints(kept) for runs in (self.finalists, self.evaluation, *self.rounds,
                                                              *self.plasticity) if runs is not None)
        for trial in self.trials:
            if trial.outcome not in (Outcome.COMPLETE, Outcome.REJECTED, Outcome.STOPPED_EARLY):
                continue
            folders = sorted(Path(trial.path).glob(CHECKPOINT_DIRS))
            if (best is not None and trial.trial_id == best.trial_id) or trial.trial_id in keep:
                folders = folders[:-1]
            for folder in folders:
                freed += folder_bytes(folder)
                shutil.rmtree(folder, ignore_errors=True)
        return freed


def folder_bytes(path: Path) -> int:
    """Bytes in the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


# ------------------------------------------------------------------------------ the driver's ledger
class TrialLedger:
    """Appends the driver's trial events to ``trials.jsonl`` (one JSON object per line, flushed at once)."""

    def __init__(self, experiment_dir: str | Path):
        self.file = Path(experiment_dir) / TRIALS_FILE
        self.started: dict[str, float] = {}  # trial id -> first start in this driver (perf_counter)

    def trial_started(self, trial_id: str, params: dict) -> None:
        self.started.setdefault(trial_id, time.perf_counter())
        self._append({"event": "start", "trial_id": trial_id, "params": params})

    def trial_ended(self, trial_id: str, status: str, params: dict, num_failures: int,
                    error: Optional[str] = None, cause: Optional[str] = None) -> None:
        started = self.started.pop(trial_id, None)
        self._append({"event": "end", "trial_id": trial_id, "status": status, "params": params,
                      "num_failures": num_failures, "error": error, "cause": cause,
                      "wall_seconds": None if started is None else time.perf_counter() - started})

    def _append(self, row: dict) -> None:
        with self.file.open("a") as f:
            f.write(json.dumps({**row, "time": time.time()}, default=str) + "\n")


def ledger_end(experiment_dir: str | Path, trial_id: str) -> Optional[str]:
    """Ray's status at the last end the ledger holds of ``trial_id`` (a later start does not undo
    it: Ray starts no finished trial again), or None if it never ended."""
    ends = [r["status"] for r in _json_lines(Path(experiment_dir) / TRIALS_FILE)
            if r["trial_id"] == trial_id and r["event"] == "end"]
    return ends[-1] if ends else None


def record_bracket(experiment_dir: str | Path, trial_id: str, band: int, bracket: int) -> None:
    """Write down that ``trial_id`` joined HyperBand bracket ``bracket`` of band ``band``."""
    with (Path(experiment_dir) / BRACKETS_FILE).open("a") as f:
        f.write(json.dumps({"trial_id": trial_id, "band": band, "bracket": bracket}) + "\n")


def recorded_brackets(experiment_dir: str | Path) -> dict[str, tuple[int, int]]:
    """``{trial id: (band, bracket)}`` as `record_bracket` wrote them."""
    return {r["trial_id"]: (r["band"], r["bracket"]) for r in _json_lines(Path(experiment_dir) / BRACKETS_FILE)}


# ------------------------------------------------------------------------------ reading storage
def reference_from(runs: SweepState) -> dict:
    """``reference.json`` from the reference runs: per task k, the complete run with the best
    validation accuracy on task k right after learning it (a*_k), its test accuracy there, and its
    learning rate. Raises RuntimeError when no run completed (all diverged, say)."""
    done = [t for t in runs.trials if t.outcome == Outcome.COMPLETE]
    if not done:
        raise RuntimeError(f"no reference run completed ({', '.join(f'{t.trial_id}: {t.outcome}' for t in runs.trials)}"
                           f"): see {runs.path}; give reference.lr values it can train with")
    chosen = [max(done, key=lambda t: t.last["val_matrix"][k][k]) for k in range(runs.spec.n_tasks)]
    return {"strategy": runs.spec.base["strategy"]["name"],
            "val": [t.last["val_matrix"][k][k] for k, t in enumerate(chosen)],
            "test": [t.last["test_matrix"][k][k] for k, t in enumerate(chosen)],
            "lr": [t.params["train.lr"] for t in chosen], "trial_id": [t.trial_id for t in chosen],
            "runs": {t.trial_id: {"lr": t.params["train.lr"], "outcome": t.outcome,
                                  "val_average_accuracy": t.last.get("val_average_accuracy")} for t in runs.trials}}


def read_reference(path: Path) -> Optional[dict]:
    """The sweep folder ``path``'s ``reference.json``, or None before its reference was trained."""
    file = Path(path) / REFERENCE_FILE
    return json.loads(file.read_text()) if file.exists() else None


def as_reference(stored: Optional[dict]) -> Optional[Reference]:
    """clcore's `Reference` from ``reference.json``'s contents."""
    return None if stored is None else Reference(stored["val"], stored["test"])


def load_sweep(path: str | Path, reference: Optional[dict] = None) -> SweepState:
    """A sweep's state from its storage folder alone (running, interrupted or finished); reads only
    the project's JSON and YAML files (see the module docstring). ``reference``: what the finalists'
    folder is measured against (the parent sweep's ``reference.json``)."""
    path = Path(path).expanduser().resolve()
    spec_file = path / SPEC_FILE
    if not spec_file.exists():
        raise FileNotFoundError(f"{path}: no {SPEC_FILE} here; give a sweep's storage folder "
                                f"(<storage.path>/<name>, printed by `clsweep run`)")
    spec = SweepSpec.from_yaml(spec_file)
    n_tasks = spec.n_tasks
    reference = reference or read_reference(path)
    a_star = reference["val"] if reference else None
    events: dict[str, list[dict]] = {}
    for row in _json_lines(path / TRIALS_FILE):
        events.setdefault(row["trial_id"], []).append(row)
    reported = {folder.name[len(trial_dirname("")):] for folder in path.glob(trial_dirname("*"))
                if (folder / TASKS_FILE).exists()}
    trials = []
    for trial_id in sorted(set(events) | reported):
        folder = path / trial_dirname(trial_id)
        history = task_history(folder)
        rows = events.get(trial_id, [])
        ended = rows[-1] if rows and rows[-1]["event"] == "end" else None
        walls = [r["wall_seconds"] for r in rows if r["event"] == "end" and r.get("wall_seconds") is not None]
        params = next((r["params"] for r in reversed(rows) if r.get("params")), None) or \
            (history[-1].get("config", {}) if history else {})
        trials.append(TrialRecord(
            trial_id, ended["status"] if ended else RUNNING, dict(params), history, str(folder), n_tasks,
            ended.get("error") if ended else None, int(ended.get("num_failures") or 0) if ended else 0,
            walls[-1] if walls else None, spec.objective.broken(history[-1].get("val_matrix") or [], a_star)
            if history else None, ended.get("cause") if ended else None))
    summary = path / SUMMARY_FILE  # written by the driver when a run or resume ends
    wall = json.loads(summary.read_text()).get("wall_seconds") if summary.exists() else None
    finalists, evaluation = (load_sweep(path / folder, reference) if (path / folder / SPEC_FILE).exists() else None
                             for folder in (FINALISTS_DIR, EVALUATION_DIR))
    rounds, plasticity = [], []
    for t in range(n_tasks) if isinstance(spec.protocol, Rounds) else ():
        folder = path / ROUNDS_DIR / round_dirname(t)
        plastic = (folder / PLASTICITY_DIR / SPEC_FILE).exists()
        if plastic or (folder / SPEC_FILE).exists():  # round t's lr search, or None: one entry per round begun
            plasticity.append(load_sweep(folder / PLASTICITY_DIR) if plastic else None)
        if not (folder / SPEC_FILE).exists():
            break
        rounds.append(load_sweep(folder))
    return SweepState(spec, path, trials, wall, finalists, reference, evaluation, rounds, plasticity,
                      read_schedule(path))


def _json_lines(file: Path) -> list[dict]:
    """The objects of a JSON-lines file; a last line cut off by a killed writer is left out."""
    if not file.exists():
        return []
    rows = []
    for line in file.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def task_history(trial_folder: Path) -> list[dict]:
    """A trial's record (its ``tasks.jsonl``), one result per task in task order; when a restored
    trial reported a task again, its last report counts."""
    by_task: dict[int, dict] = {}
    for result in _json_lines(Path(trial_folder) / TASKS_FILE):
        by_task[int(result.get(TIME_ATTR, 0))] = result
    return [by_task[k] for k in sorted(by_task)]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


__all__ = ["Outcome", "TrialRecord", "SweepState", "TrialLedger", "load_sweep", "task_history", "ledger_end", "trial_dirname", "SPEC_FILE", "TRIALS_FILE",
           "BRACKETS_FILE", "record_bracket", "recorded_brackets",
           "SUMMARY_FILE", "BEST_CONFIG_FILE", "TASKS_FILE", "FAILURE_FILE", "TIME_ATTR", "CHECKPOINT_DIRS", "folder_bytes",
           "TRAINING", "INFRASTRUCTURE",
           "FINALISTS_DIR", "FINALIST_OF", "ROUNDS_DIR", "PLASTICITY_DIR", "SCHEDULE_FILE", "SCHEDULE", "round_dirname", "read_schedule",
           "write_schedule"]
