"""MLflow tracking, the driver's side: one experiment per sweep name, a parent run per sweep, a nested
run per trial. The workers' side is `sweeps.trial_logging`; what both share (names, URIs, the `Store`)
is `sweeps.mlflow_store`.

What a sweep leaves in MLflow::

    experiment <sweep name>
      run "<sweep name> <date>"   tags  clsweep.kind=sweep, clsweep.sweep_id, clsweep.sweep_file (+ _sha256),
        |                               mlflow.source.git.commit, clsweep.ray_address, clsweep.scheduler,
        |                               clsweep.search_alg, clsweep.metric, clsweep.mode, clsweep.storage_path,
        |                               clsweep.best_trial_id, clsweep.best_run_id, best.<config field>,
        |                               clsweep.protocol, clsweep.evaluation_task_range,
        |                               clsweep.evaluation_benchmark
        |                         params    the sweep's settings (objective, algorithm, search.<field>, ...)
        |                         metrics   the best trial's last-task metrics (step = trials ended);
        |                                   with a prefix protocol evaluation_<metric>[_std] over its seeds
        |                         artifacts sweep.yaml (the resolved sweep file), best_config.yaml,
        |                                   plots/accuracy_vs_lambda.png, plots/accuracy_forgetting_pareto.png,
        |                                   plots/learning_curves.png, reference.json (with a reference),
        |                                   schedule.json (per_task, chf: the values each round kept)
        +- run "lambda=.. lr=.."  tags  mlflow.parentRunId, clsweep.kind=trial, clsweep.trial_id,
                                        clsweep.status (+ clsweep.failure_reason), clsweep.tasks_seen,
                                        clsweep.node_id, clsweep.node_ip (the Ray node of its latest task),
                                        clsweep.node_ids (every node it ran on, in order: a retry after a
                                        lost node or a resume may move it); per_task and chf:
                                        clsweep.round (the task of its round), chf's
                                        clsweep.round_phase (plasticity: its fine-tuning lr search;
                                        stability: its lambda decay)
                                  params    every config field, flat: strategy.lambda, train.lr, ...
                                  metrics   everything the trial reports, step = tasks seen;
                                            final_{val,test}_{average_accuracy,forgetting,bwt,fwt,intransigence}
                                  artifacts config.yaml, accuracy_matrix_{val,test}.{csv,png}

Trial status (tag ``clsweep.status``): ``finished`` (all tasks; MLflow FINISHED), ``stopped_early``
(a scheduler stopped it after fewer tasks; MLflow FINISHED too: a scheduler stop is a normal end),
``failed`` (MLflow FAILED, reason in ``clsweep.failure_reason``), ``rejected`` (all tasks, but it broke a
requirement of the objective, ``objective.require``; MLflow FINISHED, the requirement in
``clsweep.rejected_because``; never the best trial), ``running``, ``orphaned`` (a run whose trial the
sweep's storage does not hold; MLflow KILLED, closed by the next upload with the reason). Trial runs are named
by their searched values and, when they ended early, how (``lambda=6.98e4 lr=3.5e-4``,
``stopped 2/5 · lambda=12.3``, ``failed 3/5 · lambda=1e9``): the runs table tells the three
endings apart without a click. The experiment carries ``mlflow.experimentKind =
custom_model_development``, the kind MLflow reads for a model-training experiment; MLflow 3.17's UI
follows its own GenAI / Model training switch instead (default GenAI: an empty traces overview), so
every link printed here opens the runs with ``?workflowType=machine_learning`` (`experiment_url`).

Identity makes every write idempotent. The sweep id lives in Ray storage
(``<sweep folder>/clsweep_tracking.json``) and tags the parent run, so a resumed sweep logs into
the same parent; trial runs are found by ``clsweep.trial_id``; a task's metrics go in one batch
with ``tasks_seen`` at that step, and a step already in the ``tasks_seen`` history is not written
again. Resumes and ``clsweep sync`` therefore add only what is missing. Tags are written only when
their value differs.

Who writes what: trials log themselves from the Ray workers as tasks come in (`TrialLogger`:
`MlflowClient` with explicit run ids, no fluent ``mlflow.start_run`` state, since trials share
worker processes); the driver closes each trial run when Ray ends the trial (`SweepTracker.callback`)
and, after the sweep, uploads whatever the store still lacks from Ray storage plus the summary
(`SweepTracker.upload`, the same code as ``clsweep sync``). If the store is unreachable the sweep
runs on, warns once, and everything stays in Ray storage for ``clsweep sync PATH``.

Where: ``--tracking-uri``, else the store the sweep used before (resume, sync), else
``tracking.tracking_uri`` of the sweep file, else ``$MLFLOW_TRACKING_URI``, else the embedded
``sqlite:///mlruns.db`` in the working directory with artifacts in ``./mlartifacts`` (no server
needed; ``clsweep ui`` shows it). Tracking is on when the sweep file says ``tracking: {mlflow:
true}``, a tracking URI is given on the command line or in the environment, or the sweep was
tracked before.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from clcore.config import ExperimentConfig

if TYPE_CHECKING:  # pragma: no cover
    from sweeps.storage import SweepState, TrialRecord
    from sweeps.spec import SweepSpec

from sweeps.mlflow_store import (BEST_RUN_TAG, BEST_TRIAL_TAG, CONFIG_ARTIFACT, FAILURE_CAUSE_TAG, FAILURE_TAG,
                                 FINISHED, KIND_TAG, EVALUATION_BENCHMARK_TAG, EVALUATION_RANGE_TAG, METRIC_TAG, MODE_TAG, ORPHANED, PROTOCOL_TAG,
                                 REJECTED, REJECTED_TAG, ROUND_PHASE_TAG, ROUND_TAG, RUNNING, STATE_FILE, STATUS_TAG,
                                 STEP_METRIC, SWEEP_ID_TAG, Store, TASKS_SEEN_TAG, TRIAL_ID_TAG, _matrix_files,
                                 _param_value, check_reachable, experiment_url, final_metrics, log, node_tags,
                                 resolve_tracking_uri, trial_metrics, trial_run_name)
from sweeps.trial_logging import (TrackingSettings, TrialLogger, open_trial_run)


def _phases(state: "SweepState") -> list[tuple["SweepState", dict]]:
    """The phases whose trials are the sweep's trial runs, each with the tags its runs carry: the sweep
    itself, or a round protocol's rounds (chf's: its fine-tuning lr search, then its lambda decay)."""
    out = [(state, {})]
    for task, plastic in enumerate(state.plasticity):  # one per round begun (`SweepState.plasticity`)
        if plastic is not None:
            out.append((plastic, {ROUND_TAG: task, ROUND_PHASE_TAG: "plasticity"}))
        if task < len(state.rounds):
            out.append((state.rounds[task], {ROUND_TAG: task, **({ROUND_PHASE_TAG: "stability"} if plastic is not None else {})}))
    return out


@dataclass
class SweepIdentity:
    """What the sweep's storage folder keeps about its tracking (``clsweep_tracking.json``)."""

    sweep_id: str
    tracking_uri: str
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> Optional["SweepIdentity"]:
        path = Path(folder) / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self, folder: str | Path) -> None:
        (Path(folder) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def sweep_tags(spec: "SweepSpec") -> dict[str, str]:
    """The parent run's tags from the spec: its file and sha256, the git commit, scheduler, search."""
    source = Path(spec.source)
    text = source.read_bytes() if source.is_file() else spec.to_yaml().encode()
    tags = {"clsweep.sweep_file": str(source), "mlflow.source.name": str(source),
            "clsweep.sweep_file_sha256": hashlib.sha256(text).hexdigest(),
            "clsweep.scheduler": spec.scheduler.name + "".join(f" {k}={v}" for k, v in spec.scheduler.settings().items()
                                                             if v is not None),
            "clsweep.search_alg": spec.algorithm.name + (f" ({spec.algorithm.sampler})" if spec.algorithm.sampler else "")}
    commit = git_commit(Path(__file__).resolve().parent) or git_commit(source.resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def sweep_params(spec: "SweepSpec") -> dict[str, Any]:
    """The parent run's params: objective, algorithm, scheduler and the search space."""
    a = spec.algorithm
    return {"objective.metric": spec.objective.metric, "objective.mode": spec.mode, "algorithm.name": a.name,
            "algorithm.num_samples": a.num_samples, "algorithm.max_concurrent": a.max_concurrent,
            "algorithm.seed": a.seed, "scheduler.name": spec.scheduler.name, "max_failures": spec.max_failures,
            **{f"search.{k}": json.dumps(d.to_dict()) for k, d in spec.search.items()}}


def git_commit(where: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def ray_address() -> str:
    """The GCS address of the Ray this driver is connected to ("" when Ray is not up)."""
    try:
        import ray

        return ray.get_runtime_context().gcs_address if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001
        return ""


class SweepTracker:
    """Driver side of one sweep: the parent run, trial runs closed as trials end, the final upload."""

    def __init__(self, spec: "SweepSpec", folder: str | Path, identity: SweepIdentity):
        self.spec, self.folder, self.identity = spec, Path(folder), identity
        self.store: Optional[Store] = None
        self.parent = None
        self._warned = False

    @classmethod
    def open(cls, spec: "SweepSpec", folder: str | Path, tracking_uri: Optional[str] = None) -> "SweepTracker":
        """The tracker of the sweep stored in ``folder`` (its identity is created on first use).

        The URI: ``tracking_uri``, else the one the sweep used before, else the spec's, else
        ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store.
        """
        identity = SweepIdentity.load(folder)
        uri = resolve_tracking_uri(tracking_uri or (identity.tracking_uri if identity else None)
                                   or spec.tracking.tracking_uri)
        if identity is None:
            identity = SweepIdentity(uuid.uuid4().hex, uri, sweep_tags(spec))
        identity.tracking_uri = uri
        identity.save(folder)
        return cls(spec, folder, identity)

    @property
    def online(self) -> bool:
        return self.parent is not None

    @property
    def search_keys(self) -> tuple[str, ...]:
        """The searched config fields: they name the trial runs (`trial_run_name`); chf searches none
        itself, and its runs are named by the two it chooses each round (`Chf.chosen`)."""
        from sweeps.spec import Chf

        return Chf.chosen if isinstance(self.spec.protocol, Chf) else tuple(self.spec.search)

    def connect(self, running: bool = False) -> None:
        """Open the store and find (resume, sync) or create the parent run, marked RUNNING when
        ``running`` (a sweep starts or resumes); raises when the store is unreachable."""
        check_reachable(self.identity.tracking_uri)
        self.store = Store(self.identity.tracking_uri, self.spec.name)
        spec, store = self.spec, self.store
        tags = {KIND_TAG: "sweep", SWEEP_ID_TAG: self.identity.sweep_id, METRIC_TAG: spec.selected_on,
                MODE_TAG: spec.mode, "clsweep.storage_path": str(self.folder), PROTOCOL_TAG: spec.protocol.name,
                EVALUATION_RANGE_TAG: json.dumps(spec.evaluation_range),
                EVALUATION_BENCHMARK_TAG: json.dumps(spec.evaluation_benchmark), **self.identity.tags}
        address = ray_address()
        if address:
            tags["clsweep.ray_address"] = address
        run = store.find_run({SWEEP_ID_TAG: self.identity.sweep_id, KIND_TAG: "sweep"})
        if run is None:
            run = store.client.create_run(store.experiment_id, tags=tags,
                                          run_name=f"{spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}")
        store.log_tags(run, tags)
        store.log_params(run, sweep_params(spec))
        if running:
            store.set_status(run, RUNNING)
        self.parent = run

    def try_connect(self, running: bool = False) -> bool:
        """`connect`, warning (once) instead of raising when the store is unreachable."""
        try:
            self.connect(running)
        except Exception as error:  # noqa: BLE001
            self.went_offline(error)
        return self.online

    def went_offline(self, error: BaseException) -> None:
        self.parent = None
        if not self._warned:
            self._warned = True
            log.warning("clsweep: MLflow tracking at %s is unavailable (%s: %s). The sweep goes on and keeps "
                        "every result in Ray storage; upload them to MLflow later with:\n    clsweep sync %s",
                        self.identity.tracking_uri, type(error).__name__, str(error)[:300], self.folder)

    def settings(self) -> Optional[TrackingSettings]:
        """For the trials; None while the store is unreachable (trials then log nothing)."""
        if not self.online:
            return None
        return TrackingSettings(self.identity.tracking_uri, self.spec.name, self.store.experiment_id,
                                self.identity.sweep_id, self.parent.info.run_id, str(self.folder),
                                self.search_keys)

    # -------------------------------------------------------------- trials
    def upload_trial(self, trial: "TrialRecord", config: ExperimentConfig, run=None, tags: Optional[dict] = None) -> str:
        """Everything of ``trial`` the store does not have yet: run, params, steps, status, artifacts (and
        ``tags``: a round trial's round, `_phases`)."""
        store = self.store
        run = open_trial_run(store, self.identity.sweep_id, self.parent.info.run_id, trial.trial_id, config,
                             self.search_keys, run)
        logged = store.logged_steps(run.info.run_id)
        store.log_steps(run.info.run_id, {int(r[STEP_METRIC]): trial_metrics(r) for r in trial.history
                                          if STEP_METRIC in r and int(r[STEP_METRIC]) not in logged})
        # Ray storage has every task, in order: its node tags replace what live logging managed to write
        store.log_tags(run, {**node_tags(trial.history), **(tags or {})})
        self.close_trial(trial, config, run)
        return run.info.run_id

    def close_trial(self, trial: "TrialRecord", config: ExperimentConfig, run) -> None:
        """Status tags and, once the trial ended, final metrics, matrices and its final config."""
        status = trial.outcome.tag
        store = self.store
        if status != RUNNING:
            if status in (FINISHED, REJECTED):
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                missing = [Metric(k, v, now, trial.tasks_seen) for k, v in final_metrics(trial).items()
                           if k not in run.data.metrics]
                if missing:
                    store.client.log_batch(run.info.run_id, metrics=missing, synchronous=True)
            store.log_files(run.info.run_id, _matrix_files(trial, status))
            if any(run.data.params.get(k) != _param_value(v) for k, v in config.flat().items()):
                # PBT changed the config after the params were logged (they cannot change): keep the final one
                store.log_files(run.info.run_id, {CONFIG_ARTIFACT: config.to_yaml}, overwrite=True)
        tags = {STATUS_TAG: status, TASKS_SEEN_TAG: trial.tasks_seen}
        if trial.error:
            tags[FAILURE_TAG] = trial.error[:5000]
        if trial.cause:
            tags[FAILURE_CAUSE_TAG] = trial.cause
        if trial.broken:
            tags[REJECTED_TAG] = trial.broken
        store.log_tags(run, tags)
        name = trial_run_name(config, self.search_keys, status, trial.tasks_seen)
        if run.info.run_name != name:
            store.client.update_run(run.info.run_id, name=name)
        store.set_status(run, status)

    def close_orphan(self, run) -> None:
        """Close a trial run whose trial the sweep's storage does not hold, saying so."""
        if run.data.tags.get(STATUS_TAG) == ORPHANED:
            return
        trial_id = run.data.tags[TRIAL_ID_TAG]
        self.store.log_tags(run, {STATUS_TAG: ORPHANED, FAILURE_TAG: (
            f"no trial {trial_id} in the sweep's storage ({self.folder}): its driver stopped before Ray's snapshot "
            f"or the sweep's ledger had it, so no resume runs it; its logged steps stay")})
        self.store.set_status(run, ORPHANED)

    def callback(self, spec: Optional["SweepSpec"] = None):
        """A Ray Tune callback that closes each trial's run as Ray ends the trial; ``spec``: the phase
        its trials belong to (a per_task round), when not the sweep itself."""
        from ray.tune import Callback

        tracker, phase = self, spec or self.spec

        class MLflowTrialRuns(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                tracker.trial_ended(trial, error=None, phase=phase)

            def on_trial_error(self, iteration, trials, trial, **info):
                from sweeps.runner import trial_failure

                tracker.trial_ended(trial, *trial_failure(trial), phase=phase)

        return MLflowTrialRuns()

    def trial_ended(self, trial, error: Optional[str], cause: Optional[str] = None,
                    phase: Optional["SweepSpec"] = None) -> None:
        """Close the run of a Ray trial from its last result (its steps are the worker's or `upload`'s job)."""
        if not self.online:
            return
        from sweeps.storage import ERROR, TERMINATED, TrialRecord

        phase = phase or self.spec
        try:
            record = TrialRecord(trial.trial_id, ERROR if error else TERMINATED, dict(trial.config),
                                 [trial.last_result] if trial.last_result else [], str(trial.path),
                                 phase.n_tasks, error, cause=cause)
            config = phase.trial_config(record.params)
            run = self.store.find_run({SWEEP_ID_TAG: self.identity.sweep_id, TRIAL_ID_TAG: trial.trial_id})
            self.close_trial(record, config, run or open_trial_run(
                self.store, self.identity.sweep_id, self.parent.info.run_id, trial.trial_id, config,
                self.search_keys))
        except Exception as e:  # noqa: BLE001
            self.went_offline(e)

    # -------------------------------------------------------------- the whole sweep
    def upload(self, state: "SweepState") -> "SyncReport":
        """Every trial's missing pieces, then the summary and the status of the parent run."""
        runs = self.store.trial_runs(self.identity.sweep_id)
        searched = [(t, phase, tags) for phase, tags in _phases(state) for t in phase.trials]
        run_ids = {t.trial_id: self.upload_trial(t, phase.trial_config(t), runs.get(t.trial_id), tags)
                   for t, phase, tags in searched if t.history or t.trial_id in runs}
        for trial_id in runs.keys() - {t.trial_id for t, _, _ in searched}:
            self.close_orphan(runs[trial_id])
        best = self.summarize(state, run_ids)
        self.store.client.set_terminated(self.parent.info.run_id, "FINISHED" if state.finished else "KILLED")
        return SyncReport(self.identity.tracking_uri, self.store.experiment_id, self.parent.info.run_id, run_ids,
                          best.trial_id if best else None)

    def log_finalists(self, state: "SweepState", run_ids: dict[str, str]) -> None:
        """On each finalist's trial run: the mean and std of its objective over its fresh seeds, the
        metric `sweeps.best` ranks by when the sweep has finalists (``spec.selected_on``)."""
        import statistics

        from mlflow.entities import Metric

        now, name = int(time.time() * 1000), state.spec.selected_on
        for trial_id, values in state.finalist_scores().items():
            if trial_id not in run_ids:
                continue
            metrics = {name: statistics.fmean(values), f"{name}_std": statistics.pstdev(values)}
            logged = self.store.client.get_run(run_ids[trial_id]).data.metrics
            if any(logged.get(k) != v for k, v in metrics.items()):  # a sync after the run logs nothing again
                self.store.client.log_batch(run_ids[trial_id], synchronous=True, metrics=[
                    Metric(k, v, now, len(values)) for k, v in metrics.items()])

    def log_evaluation(self, state: "SweepState", parent) -> None:
        """On the parent run: a protocol's evaluation of the chosen values, ``evaluation_<metric>`` and
        ``evaluation_<metric>_std`` over its fresh seeds (test and validation)."""
        row = state.evaluation_row()
        if row is None:
            return
        from mlflow.entities import Metric

        metrics = {}
        for name, value in row["metrics"].items():
            metrics[f"evaluation_{name}"], metrics[f"evaluation_{name}_std"] = value["mean"], value["std"]
        if any(parent.data.metrics.get(k) != v for k, v in metrics.items()):
            now = int(time.time() * 1000)
            self.store.client.log_batch(parent.info.run_id, synchronous=True, metrics=[
                Metric(k, v, now, len(row["seeds"])) for k, v in metrics.items()])

    def summarize(self, state: "SweepState", run_ids: dict[str, str]) -> Optional["TrialRecord"]:
        """On the parent run: the best trial's metrics and config, and the sweep's plots."""
        from sweeps import plots
        from sweeps.storage import REFERENCE_FILE, SCHEDULE_FILE

        spec, store, parent_id = self.spec, self.store, self.parent.info.run_id
        best = state.best()
        parent = store.client.get_run(parent_id)
        files = {"sweep.yaml": spec.to_yaml}
        if best is not None:
            config = state.chosen_config()
            values = trial_metrics(best.last)
            if parent.data.tags.get(BEST_TRIAL_TAG) != best.trial_id or any(
                    parent.data.metrics.get(k) != v for k, v in values.items()):
                from mlflow.entities import Metric

                now, step = int(time.time() * 1000), sum(t.outcome.ended for t in state.trials)
                store.client.log_batch(parent_id, metrics=[Metric(k, v, now, step) for k, v in values.items()],
                                       synchronous=True)
            store.log_tags(parent, {BEST_TRIAL_TAG: best.trial_id, BEST_RUN_TAG: run_ids.get(best.trial_id, ""),
                                    **{f"best.{k}": _param_value(v) for k, v in config.flat().items()}})
            files["best_config.yaml"] = config.to_yaml
        schedule = state.chosen_config() if state.rounds else None
        if schedule is not None:  # per_task: what it chose is a schedule, no one trial
            files["best_config.yaml"] = schedule.to_yaml
            files[SCHEDULE_FILE] = lambda p: p.write_text(json.dumps(state.schedule, indent=2))
        self.log_finalists(state, run_ids)
        self.log_evaluation(state, parent)
        if state.reference is not None:  # what intransigence and the plasticity ratio were measured against
            files[REFERENCE_FILE] = lambda p: p.write_text(json.dumps(state.reference, indent=2))
        trials = [plots.TrialPoint(t.trial_id, state.trial_config(t), t.outcome.tag, t.last)
                  for t in state.trials if t.history]
        metric = spec.objective.metric
        prefix = metric.split("_", 1)[0] + "_"
        best_id = best.trial_id if best else None
        files["plots/accuracy_vs_lambda.png"] = lambda p: plots.accuracy_vs_lambda(trials, metric, p) is not None
        files["plots/accuracy_forgetting_pareto.png"] = lambda p: plots.tradeoff(trials, prefix, p) is not None
        files["plots/learning_curves.png"] = lambda p: plots.learning_curves(trials, best_id, p) is not None
        store.log_files(parent_id, files, overwrite=True)
        return best


@dataclass
class SyncReport:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    run_ids: dict[str, str]  # trial id -> run id
    best_trial_id: Optional[str]

    def describe(self) -> str:
        where = (experiment_url(self.tracking_uri, self.experiment_id)
                 if self.tracking_uri.startswith("http") else f"{self.tracking_uri} (browse it with: clsweep ui)")
        return f"MLflow: {len(self.run_ids)} trial runs under parent run {self.parent_run_id}: {where}"


def log_to_parent(folder: str | Path, files: dict[str, Path]) -> bool:
    """Upload ``files`` (``{artifact path: local file}``) to the parent run of the sweep stored in
    ``folder`` (``clsweep compare``'s table); False when the sweep was not tracked or its store does
    not answer, so nothing is lost: the files stay where they are."""
    import shutil

    from sweeps.spec import SweepSpec
    from sweeps.storage import SPEC_FILE

    identity = SweepIdentity.load(folder)
    if identity is None:
        return False
    try:
        check_reachable(identity.tracking_uri)
        store = Store(identity.tracking_uri, SweepSpec.from_yaml(Path(folder) / SPEC_FILE).name)
        run = store.find_run({SWEEP_ID_TAG: identity.sweep_id, KIND_TAG: "sweep"})
        if run is None:
            return False
        store.log_files(run.info.run_id, {path: functools.partial(shutil.copyfile, source)
                                          for path, source in files.items()}, overwrite=True)
    except Exception:  # noqa: BLE001 - an unreachable store: the table is on disk
        return False
    return True


def sync(folder: str | Path, tracking_uri: Optional[str] = None) -> SyncReport:
    """Upload a sweep's results from its storage folder to MLflow, adding only what is missing.

    Works for a sweep that ran with tracking off, or while the store was unreachable; the store
    defaults to the one the sweep used. Raises `TrackingUnavailableError` when it cannot be reached.
    """
    from sweeps.storage import load_sweep

    state = load_sweep(folder)
    tracker = SweepTracker.open(state.spec, state.path, tracking_uri)
    tracker.connect()
    return tracker.upload(state)


# ------------------------------------------------------------------------------ the runner's hook
class MLflowTracking:
    """The runner's tracking hook for MLflow: implements `sweeps.runner.Tracking`.

    On when ``tracking_uri`` is given, the sweep file says ``tracking: {mlflow: true}``,
    ``$MLFLOW_TRACKING_URI`` is set, or the sweep was tracked before (on resume).
    """

    def __init__(self, tracking_uri: Optional[str] = None):
        self.tracking_uri = tracking_uri
        self.tracker: Optional[SweepTracker] = None

    def sweep_started(self, spec: "SweepSpec", experiment_dir: Path, resumed: bool) -> None:
        enabled = (self.tracking_uri or spec.tracking.mlflow or os.environ.get("MLFLOW_TRACKING_URI")
                   or SweepIdentity.load(experiment_dir) is not None)
        if not enabled:
            return
        self.tracker = SweepTracker.open(spec, experiment_dir, self.tracking_uri)
        self.tracker.try_connect(running=True)

    def callbacks(self, spec: Optional["SweepSpec"] = None) -> list:
        return [self.tracker.callback(spec)] if self.tracker is not None else []

    def trial_logger(self):
        settings = self.tracker.settings() if self.tracker is not None else None
        return functools.partial(TrialLogger, settings) if settings is not None else None

    def sweep_finished(self, spec: "SweepSpec", state: "SweepState") -> None:
        tracker = self.tracker
        if tracker is None:
            return
        try:
            if not tracker.online:
                tracker.connect()
            print(tracker.upload(state).describe(), flush=True)
        except Exception as error:  # noqa: BLE001
            tracker.went_offline(error)
            log.warning("clsweep: MLflow lacks results of this sweep (all of them are in Ray storage). "
                        "Once %s is reachable, run:\n    clsweep sync %s", tracker.identity.tracking_uri, state.path)
