"""MLflow tracking: one experiment per sweep name, a parent run per sweep, a nested run per trial.

What a sweep leaves in MLflow::

    experiment <sweep name>
      run "<sweep name> <date>"   tags  clsweep.kind=sweep, clsweep.sweep_id, clsweep.sweep_file (+ _sha256),
        |                               mlflow.source.git.commit, clsweep.ray_address, clsweep.scheduler,
        |                               clsweep.search_alg, clsweep.metric, clsweep.mode, clsweep.storage_path,
        |                               clsweep.best_trial_id, clsweep.best_run_id, best.<config field>
        |                         params    the sweep's settings (objective, algorithm, search.<field>, ...)
        |                         metrics   the best trial's last-task metrics (step = trials ended)
        |                         artifacts sweep.yaml (the resolved sweep file), best_config.yaml,
        |                                   plots/accuracy_vs_lambda.png, plots/accuracy_forgetting_pareto.png,
        |                                   plots/learning_curves.png
        +- run "lambda=.. lr=.."  tags  mlflow.parentRunId, clsweep.kind=trial, clsweep.trial_id,
                                        clsweep.status (+ clsweep.failure_reason), clsweep.tasks_seen,
                                        clsweep.node_id, clsweep.node_ip (the Ray node of its latest task),
                                        clsweep.node_ids (every node it ran on, in order: a retry after a
                                        lost node or a resume may move it)
                                  params    every config field, flat: strategy.lambda, train.lr, ...
                                  metrics   everything the trial reports, step = tasks seen;
                                            final_{val,test}_{average_accuracy,forgetting,bwt,fwt,intransigence}
                                  artifacts config.yaml, accuracy_matrix_{val,test}.{csv,png}

Trial status (tag ``clsweep.status``): ``finished`` (all tasks; MLflow FINISHED), ``stopped_early``
(a scheduler stopped it after fewer tasks; MLflow FINISHED too: a scheduler stop is a normal end),
``failed`` (MLflow FAILED, reason in ``clsweep.failure_reason``), ``running``. Trial runs are named
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

import csv
import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from clcore.config import ExperimentConfig

if TYPE_CHECKING:  # pragma: no cover
    from sweeps.storage import SweepState, TrialRecord
    from sweeps.spec import SweepSpec

log = logging.getLogger("clsweep.tracking")

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
STATE_FILE = "clsweep_tracking.json"  # in the sweep's storage folder

PARENT_RUN_TAG = "mlflow.parentRunId"
# The experiment kind MLflow 3 reads to show a model-training experiment (runs) rather than a GenAI
# one (traces). MLflow 3.17's UI takes the kind from its GenAI / Model training switch instead,
# default GenAI, which the ``workflowType`` query parameter sets: `experiment_url` adds it.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
UI_QUERY = "workflowType=machine_learning"

KIND_TAG = "clsweep.kind"  # sweep | trial
SWEEP_ID_TAG = "clsweep.sweep_id"
TRIAL_ID_TAG = "clsweep.trial_id"
STATUS_TAG = "clsweep.status"
FAILURE_TAG = "clsweep.failure_reason"
TASKS_SEEN_TAG = "clsweep.tasks_seen"
BEST_TRIAL_TAG = "clsweep.best_trial_id"
BEST_RUN_TAG = "clsweep.best_run_id"
METRIC_TAG, MODE_TAG = "clsweep.metric", "clsweep.mode"
NODE_ID_TAG, NODE_IP_TAG, NODE_IDS_TAG = "clsweep.node_id", "clsweep.node_ip", "clsweep.node_ids"

FINISHED, STOPPED_EARLY, FAILED, RUNNING = "finished", "stopped_early", "failed", "running"
# The runner's outcome of a trial -> clsweep.status, and clsweep.status -> MLflow run status.
STATUS_OF_OUTCOME = {"complete": FINISHED, "stopped early": STOPPED_EARLY, "failed": FAILED,
                     "running": RUNNING, "pending": RUNNING}
# A scheduler stop is a normal end (FINISHED, as in Ray's own MLflow callback); the run's name tells
# it apart from a trial that saw every task (see `trial_run_name`), and clsweep.status says it too.
MLFLOW_STATUS = {FINISHED: "FINISHED", STOPPED_EARLY: "FINISHED", FAILED: "FAILED", RUNNING: "RUNNING"}

STEP_METRIC = "tasks_seen"
FINAL_METRICS = ("average_accuracy", "forgetting", "bwt", "fwt", "intransigence")
CONFIG_ARTIFACT = "config.yaml"
# Keys Ray Tune adds to every result; every other number a trial reports is one of its metrics.
RAY_RESULT_KEYS = frozenset({
    "timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
    "iterations_since_restore", "done", "should_checkpoint", "checkpoint_dir_name", "trial_id", "date",
    "hostname", "node_ip", "config", "experiment_tag", "experiment_id",
})
# While a sweep runs: fail fast against a dead server, and no "View run at ..." line per trial.
SWEEP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def experiment_url(server: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs (the parent run and its nested trials)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?{UI_QUERY}"


class TrackingUnavailableError(RuntimeError):
    """The tracking store cannot be reached."""


# ------------------------------------------------------------------------------ URIs
def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlruns.db``.

    Relative SQLite paths and plain folders become absolute, so Ray workers (whose working
    directory is their trial folder) write to the same store as the driver.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    if "://" not in uri:  # a folder: MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def default_artifact_location(uri: str, experiment_name: str) -> Optional[str]:
    """For a SQLite store, ``mlartifacts/<experiment>`` next to the database; other stores choose."""
    if uri.startswith("sqlite:///"):
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name)
        return (Path(uri[len("sqlite:///"):]).parent / DEFAULT_ARTIFACT_DIR / folder).as_uri()
    return None


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Raise `TrackingUnavailableError` when an HTTP tracking server does not answer ``/health``."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as error:
        raise TrackingUnavailableError(f"MLflow tracking server {uri} is unreachable "
                                       f"({type(error).__name__})") from None
    if response.status_code != 200:
        raise TrackingUnavailableError(f"MLflow tracking server {uri} answered /health with "
                                       f"HTTP {response.status_code}")


def _sweep_env() -> None:
    for key, value in SWEEP_ENV.items():
        os.environ.setdefault(key, value)


def _q(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


# ------------------------------------------------------------------------------ one store
class Store:
    """A tracking store and one experiment in it; every write adds only what is missing."""

    def __init__(self, uri: str, experiment_name: str, experiment_id: Optional[str] = None):
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = experiment_id or self._experiment(experiment_name)

    def _experiment(self, name: str) -> str:
        """The id of experiment ``name`` (restored if deleted), created when missing, and tagged as a
        model-training experiment so that the MLflow UI opens it on its runs (`EXPERIMENT_TAGS`)."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, default_artifact_location(self.uri, name),
                                                     tags=EXPERIMENT_TAGS)
            except Exception:  # noqa: BLE001 - created meanwhile by another process
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        for key, value in EXPERIMENT_TAGS.items():  # experiments made before the tag, or by hand
            if experiment.tags.get(key) != value:
                self.client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id

    def find_run(self, tags: dict[str, str]):
        """The newest active run carrying all of ``tags``, or None."""
        runs = self.client.search_runs([self.experiment_id], " and ".join(f"tags.`{k}` = {_q(v)}"
                                                                          for k, v in tags.items()),
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def trial_runs(self, sweep_id: str) -> dict[str, Any]:
        """``{trial id: Run}`` for the trial runs of a sweep."""
        out, token = {}, None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], f"tags.`{SWEEP_ID_TAG}` = {_q(sweep_id)} and tags.`{KIND_TAG}` = 'trial'",
                max_results=1000, page_token=token)
            for run in page:
                out.setdefault(run.data.tags[TRIAL_ID_TAG], run)
            token = page.token
            if not token:
                return out

    def log_params(self, run, params: dict[str, Any]) -> None:
        """Params ``run`` does not have yet (MLflow params never change once logged)."""
        from mlflow.entities import Param

        missing = [Param(k, _param_value(v)) for k, v in params.items() if k not in run.data.params]
        for start in range(0, len(missing), 100):
            self.client.log_batch(run.info.run_id, params=missing[start:start + 100], synchronous=True)

    def log_tags(self, run, tags: dict[str, Any]) -> None:
        """Tags whose value on ``run`` differs."""
        from mlflow.entities import RunTag

        changed = [RunTag(k, str(v)) for k, v in tags.items() if run.data.tags.get(k) != str(v)]
        for start in range(0, len(changed), 100):
            self.client.log_batch(run.info.run_id, tags=changed[start:start + 100], synchronous=True)

    def logged_steps(self, run_id: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, STEP_METRIC)}

    def log_steps(self, run_id: str, steps: dict[int, dict[str, float]]) -> None:
        """One batch per step, ``tasks_seen`` included, so a step is either all there or absent."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for step, values in sorted(steps.items()):
            values = {**values, STEP_METRIC: float(step)}
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()],
                                  synchronous=True)

    def log_files(self, run_id: str, files: dict[str, Callable[[Path], Any]], *, overwrite: bool = False) -> None:
        """``{artifact path: writer(local path)}``: write and upload each file (only missing ones
        unless ``overwrite``). A writer that returns False has nothing to write."""
        if not overwrite:
            existing = set()
            for folder in {str(Path(p).parent) for p in files}:
                existing |= {f.path for f in self.client.list_artifacts(run_id, None if folder == "." else folder)}
            files = {p: w for p, w in files.items() if p not in existing}
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="clsweep-") as tmp:
            for artifact_path, writer in files.items():
                local = Path(tmp, artifact_path)
                local.parent.mkdir(parents=True, exist_ok=True)
                if writer(local) is False or not local.exists():
                    continue
                folder = str(Path(artifact_path).parent)
                self.client.log_artifact(run_id, str(local), None if folder == "." else folder)

    def set_status(self, run, status: str) -> None:
        target = MLFLOW_STATUS[status]
        if run.info.status == target:
            return
        if target == "RUNNING":
            self.client.update_run(run.info.run_id, status="RUNNING")
        else:
            self.client.set_terminated(run.info.run_id, target)


def _param_value(value: Any) -> str:
    return "None" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


# ------------------------------------------------------------------------------ a trial's data
def trial_metrics(result: dict) -> dict[str, float]:
    """The trial's own numbers in a Ray result (Ray's bookkeeping keys, strings and flags left out)."""
    return {k: float(v) for k, v in result.items()
            if k not in RAY_RESULT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def final_metrics(trial: "TrialRecord") -> dict[str, float]:
    """``final_<split>_<metric>``: average accuracy, forgetting, BWT, FWT, intransigence after the last task."""
    return {f"final_{split}_{name}": float(trial.last[f"{split}_{name}"])
            for split in ("val", "test") for name in FINAL_METRICS if f"{split}_{name}" in trial.last}


def node_tags(rows: list[dict], known: str = "") -> dict[str, str]:
    """Where a trial ran, from its results (each names its Ray node: ``node_id``, ``node_ip``):
    the node of the latest one, and every node in order of first use after those in ``known``
    (a ``clsweep.node_ids`` value). Empty when no result names a node."""
    ids = [i for i in known.split(",") if i]
    last = None
    for row in rows:
        if row.get("node_id"):
            last = row
            if row["node_id"] not in ids:
                ids.append(row["node_id"])
    if last is None:
        return {}
    tags = {NODE_ID_TAG: str(last["node_id"]), NODE_IDS_TAG: ",".join(ids)}
    if last.get("node_ip"):
        tags[NODE_IP_TAG] = str(last["node_ip"])
    return tags


def trial_run_name(config: ExperimentConfig, search_keys: tuple[str, ...] | list[str], status: str = RUNNING,
                   tasks_seen: int = 0) -> str:
    """A trial run's name in the MLflow UI: its searched values, ``lambda=6.98e4 lr=3.5e-4`` (a key by
    its last part, unless two searched keys share it; ``trial`` when nothing is searched), led by how
    it ended when that was short of its last task: ``stopped 2/5 · lambda=6.98e4``, ``failed 0/5 · ...``
    (first, so that the runs table's narrow name column shows it), so the three endings tell apart at
    a glance."""
    last = [k.rsplit(".", 1)[-1] for k in search_keys]
    values = config.flat()
    name = " ".join(f"{short if last.count(short) == 1 else key}={_short_number(values[key])}"
                    for key, short in zip(search_keys, last)) or "trial"
    ending = {STOPPED_EARLY: "stopped", FAILED: "failed"}.get(status)
    return f"{ending} {tasks_seen}/{config.benchmark.n_tasks} · {name}" if ending else name


def _short_number(value: Any) -> str:
    """3 significant digits, exponents without '+' and leading zeros (``6.98e4``, ``3.5e-4``)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return _param_value(value).replace(" ", "")
    if value == 0 or 1e-3 <= abs(value) < 1e3:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def write_matrix_csv(matrix: list[list[float]], n_tasks: int, path: Path) -> None:
    """Row i: after training task i; column j: accuracy on task j."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["after_task"] + [f"task_{j}" for j in range(n_tasks)])
        for i, row in enumerate(matrix):
            writer.writerow([i] + [repr(float(v)) for v in row])


def read_matrix_csv(path: str | Path) -> list[list[float]]:
    """The matrix an ``accuracy_matrix_*.csv`` artifact holds."""
    with open(path, newline="") as f:
        return [[float(v) for v in row[1:]] for row in list(csv.reader(f))[1:]]


def _matrix_files(trial: "TrialRecord", status: str) -> dict[str, Callable[[Path], Any]]:
    from sweeps import plots

    out = {}
    for split in ("val", "test"):
        matrix = trial.last.get(f"{split}_matrix")
        if matrix:
            out[f"accuracy_matrix_{split}.csv"] = functools.partial(write_matrix_csv, matrix, trial.n_tasks)
            out[f"accuracy_matrix_{split}.png"] = functools.partial(
                plots.accuracy_heatmap, matrix, trial.n_tasks,
                title=f"{split} accuracy, trial {trial.trial_id} ({status})")
    return out


# ------------------------------------------------------------------------------ worker side
@dataclass(frozen=True)
class TrackingSettings:
    """What a trial needs to log straight to MLflow from any Ray worker (plain strings, picklable)."""

    tracking_uri: str
    experiment_name: str
    experiment_id: str
    sweep_id: str
    parent_run_id: str
    storage_dir: str  # the sweep's storage folder, named in warnings
    search_keys: tuple[str, ...] = ()  # the searched config fields: they name the trial's run


_warned_in_this_process: set[str] = set()


class TrialLogger:
    """Worker side: logs one trial into its nested run, task by task.

    Called with every result the trial reports to Ray (the dict Ray stores in ``result.json``,
    so ``clsweep sync`` uploads exactly what live logging would have). The first call finds or
    creates the trial's run and logs its config; each call logs its task at ``step = tasks_seen``
    unless that step is already there. On a tracking error it warns (once per process) and stops
    logging this trial; its results stay in Ray storage for ``clsweep sync``.
    """

    def __init__(self, settings: TrackingSettings, trial_id: str, trial_name: str, config: ExperimentConfig):
        self.settings, self.trial_id, self.config = settings, trial_id, config
        self.enabled = True
        self._store: Optional[Store] = None
        self._run = None
        self._run_id = ""
        self._steps: set[int] = set()

    def __call__(self, result: dict) -> None:
        if not self.enabled:
            return
        try:
            if self._store is None:
                _sweep_env()
                s = self.settings
                check_reachable(s.tracking_uri)
                self._store = Store(s.tracking_uri, s.experiment_name, s.experiment_id)
                self._run = open_trial_run(self._store, s.sweep_id, s.parent_run_id, self.trial_id, self.config,
                                           s.search_keys)
                self._run_id = self._run.info.run_id
                self._steps = self._store.logged_steps(self._run_id)
            if result.get("node_id") and result["node_id"] != self._run.data.tags.get(NODE_ID_TAG):
                # where the trial runs now; the run's tags as opened, kept up to date with what this logger writes
                tags = node_tags([result], self._run.data.tags.get(NODE_IDS_TAG, ""))
                self._store.log_tags(self._run, tags)
                self._run.data.tags.update(tags)
            step = int(result[STEP_METRIC])
            if step not in self._steps:
                self._store.log_steps(self._run_id, {step: trial_metrics(result)})
                self._steps.add(step)
        except Exception as error:  # noqa: BLE001 - tracking never fails a trial
            self.enabled = False
            where = self.settings.storage_dir
            if self.settings.tracking_uri not in _warned_in_this_process:
                _warned_in_this_process.add(self.settings.tracking_uri)
                log.warning("clsweep: MLflow tracking at %s failed (%s: %s); trials go on and keep their "
                            "results in Ray storage. Upload them later with:  clsweep sync %s",
                            self.settings.tracking_uri, type(error).__name__, str(error)[:300], where)


def open_trial_run(store: Store, sweep_id: str, parent_run_id: str, trial_id: str, config: ExperimentConfig,
                   search_keys: tuple[str, ...], run=None):
    """The trial's nested run (``run``, else found by ``clsweep.trial_id``, else created) with its params and
    config.yaml: what a worker that lost the server between creating the run and logging them left out."""
    if run is None:
        run = store.find_run({SWEEP_ID_TAG: sweep_id, TRIAL_ID_TAG: trial_id})
    if run is None:
        run = store.client.create_run(store.experiment_id, run_name=trial_run_name(config, search_keys), tags={
            PARENT_RUN_TAG: parent_run_id, KIND_TAG: "trial", SWEEP_ID_TAG: sweep_id, TRIAL_ID_TAG: trial_id,
            STATUS_TAG: RUNNING})
    store.log_params(run, config.flat())
    store.log_files(run.info.run_id, {CONFIG_ARTIFACT: config.to_yaml})
    return run


# ------------------------------------------------------------------------------ driver side
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
        """The searched config fields: they name the trial runs (`trial_run_name`)."""
        return tuple(self.spec.search)

    def connect(self, running: bool = False) -> None:
        """Open the store and find (resume, sync) or create the parent run, marked RUNNING when
        ``running`` (a sweep starts or resumes); raises when the store is unreachable."""
        check_reachable(self.identity.tracking_uri)
        self.store = Store(self.identity.tracking_uri, self.spec.name)
        spec, store = self.spec, self.store
        tags = {KIND_TAG: "sweep", SWEEP_ID_TAG: self.identity.sweep_id, METRIC_TAG: spec.objective.metric,
                MODE_TAG: spec.mode, "clsweep.storage_path": str(self.folder), **self.identity.tags}
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
    def upload_trial(self, trial: "TrialRecord", config: ExperimentConfig, run=None) -> str:
        """Everything of ``trial`` the store does not have yet: run, params, steps, status, artifacts."""
        store = self.store
        run = open_trial_run(store, self.identity.sweep_id, self.parent.info.run_id, trial.trial_id, config,
                             self.search_keys, run)
        logged = store.logged_steps(run.info.run_id)
        store.log_steps(run.info.run_id, {int(r[STEP_METRIC]): trial_metrics(r) for r in trial.history
                                          if STEP_METRIC in r and int(r[STEP_METRIC]) not in logged})
        # Ray storage has every task, in order: its node tags replace what live logging managed to write
        store.log_tags(run, node_tags(trial.history))
        self.close_trial(trial, config, run)
        return run.info.run_id

    def close_trial(self, trial: "TrialRecord", config: ExperimentConfig, run) -> None:
        """Status tags and, once the trial ended, final metrics, matrices and its final config."""
        status = STATUS_OF_OUTCOME[trial.outcome]
        store = self.store
        if status != RUNNING:
            if status == FINISHED:
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
        store.log_tags(run, tags)
        name = trial_run_name(config, self.search_keys, status, trial.tasks_seen)
        if run.info.run_name != name:
            store.client.update_run(run.info.run_id, name=name)
        store.set_status(run, status)

    def callback(self):
        """A Ray Tune callback that closes each trial's run as Ray ends the trial."""
        from ray.tune import Callback

        tracker = self

        class MLflowTrialRuns(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                tracker.trial_ended(trial, error=None)

            def on_trial_error(self, iteration, trials, trial, **info):
                from sweeps.runner import trial_error

                tracker.trial_ended(trial, error=trial_error(trial))

        return MLflowTrialRuns()

    def trial_ended(self, trial, error: Optional[str]) -> None:
        """Close the run of a Ray trial from its last result (its steps are the worker's or `upload`'s job)."""
        if not self.online:
            return
        from sweeps.storage import ERROR, TERMINATED, TrialRecord

        try:
            record = TrialRecord(trial.trial_id, ERROR if error else TERMINATED, dict(trial.config),
                                 [trial.last_result] if trial.last_result else [], str(trial.path),
                                 self.spec.n_tasks, error)
            config = self.spec.trial_config(record.params)
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
        run_ids = {t.trial_id: self.upload_trial(t, state.trial_config(t), runs.get(t.trial_id))
                   for t in state.trials if t.history or t.trial_id in runs}
        best = self.summarize(state, run_ids)
        ended = bool(state.trials) and all(t.outcome in ("complete", "stopped early", "failed") for t in state.trials)
        self.store.client.set_terminated(self.parent.info.run_id, "FINISHED" if ended else "KILLED")
        return SyncReport(self.identity.tracking_uri, self.store.experiment_id, self.parent.info.run_id, run_ids,
                          best.trial_id if best else None)

    def summarize(self, state: "SweepState", run_ids: dict[str, str]) -> Optional["TrialRecord"]:
        """On the parent run: the best trial's metrics and config, and the sweep's plots."""
        from sweeps import plots

        spec, store, parent_id = self.spec, self.store, self.parent.info.run_id
        best = state.best()
        parent = store.client.get_run(parent_id)
        files = {"sweep.yaml": spec.to_yaml}
        if best is not None:
            config = state.trial_config(best)
            values = trial_metrics(best.last)
            if parent.data.tags.get(BEST_TRIAL_TAG) != best.trial_id or any(
                    parent.data.metrics.get(k) != v for k, v in values.items()):
                from mlflow.entities import Metric

                now, step = int(time.time() * 1000), sum(t.outcome not in ("running", "pending") for t in state.trials)
                store.client.log_batch(parent_id, metrics=[Metric(k, v, now, step) for k, v in values.items()],
                                       synchronous=True)
            store.log_tags(parent, {BEST_TRIAL_TAG: best.trial_id, BEST_RUN_TAG: run_ids.get(best.trial_id, ""),
                                    **{f"best.{k}": _param_value(v) for k, v in config.flat().items()}})
            files["best_config.yaml"] = config.to_yaml
        trials = [plots.TrialPoint(t.trial_id, state.trial_config(t), STATUS_OF_OUTCOME[t.outcome], t.last)
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
        _sweep_env()
        self.tracker = SweepTracker.open(spec, experiment_dir, self.tracking_uri)
        self.tracker.try_connect(running=True)

    def callbacks(self) -> list:
        return [self.tracker.callback()] if self.tracker is not None else []

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
