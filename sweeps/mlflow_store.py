"""What the driver and the workers share about MLflow: the tag and file names, tracking URIs, the
`Store` (one experiment; every write adds only what is missing) and a trial's metrics, run name and
matrix files. See `sweeps.tracking` for what a sweep leaves in MLflow and who writes what."""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from clcore.config import ExperimentConfig
from sweeps.storage import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from sweeps.storage import TrialRecord


log = logging.getLogger("clsweep.tracking")

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"  # relative: resolved against the working directory
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
FAILURE_CAUSE_TAG = "clsweep.failure_cause"  # a failed trial's: training or infrastructure (sweeps.storage)
REJECTED_TAG = "clsweep.rejected_because"  # the objective's requirement a rejected trial broke, and when
TASKS_SEEN_TAG = "clsweep.tasks_seen"
BEST_TRIAL_TAG = "clsweep.best_trial_id"
BEST_RUN_TAG = "clsweep.best_run_id"
METRIC_TAG, MODE_TAG = "clsweep.metric", "clsweep.mode"
# The selection protocol, and the task range its chosen values are evaluated on (JSON: null = every
# task): a prefix protocol's trials trained the prefix alone, and `sweeps.best` returns their configs
# with this range, as best_config.yaml has it.
PROTOCOL_TAG, EVALUATION_RANGE_TAG = "clsweep.protocol", "clsweep.evaluation_task_range"
# two_phase's: the target's values of the benchmark fields its search changed (JSON object)
EVALUATION_BENCHMARK_TAG = "clsweep.evaluation_benchmark"
NODE_ID_TAG, NODE_IP_TAG, NODE_IDS_TAG = "clsweep.node_id", "clsweep.node_ip", "clsweep.node_ids"
# per_task and chf: the task of the round a trial ran in, and (chf) the round's phase: "plasticity" for its
# fine-tuning lr search, "stability" for its lambda decay (task 0's lr search has neither: no penalty acts)
ROUND_TAG, ROUND_PHASE_TAG = "clsweep.round", "clsweep.round_phase"

# clsweep.status words (`sweeps.storage.Outcome.tag`), and clsweep.status -> MLflow run status.
FINISHED, REJECTED, STOPPED_EARLY, FAILED, RUNNING = (o.tag for o in (
    Outcome.COMPLETE, Outcome.REJECTED, Outcome.STOPPED_EARLY, Outcome.FAILED, Outcome.RUNNING))
# A scheduler stop and a rejection are normal ends (FINISHED, as in Ray's own MLflow callback); the
# run's name tells them apart from a trial that saw every task and kept the objective's requirements
# (see `trial_run_name`), and clsweep.status says it too.
# ``orphaned``: a trial run whose trial the sweep's storage does not hold (a driver died after the
# run was opened and the trial was lost; `SweepTracker.upload` closes it, the reason in clsweep.failure_reason).
ORPHANED = "orphaned"
MLFLOW_STATUS = {FINISHED: "FINISHED", REJECTED: "FINISHED", STOPPED_EARLY: "FINISHED", FAILED: "FAILED",
                 RUNNING: "RUNNING", ORPHANED: "KILLED"}

STEP_METRIC = "tasks_seen"
FINAL_METRICS = ("average_accuracy", "forgetting", "bwt", "fwt", "intransigence")
CONFIG_ARTIFACT = "config.yaml"
# Keys Ray Tune adds to every result; every other number a trial reports is one of its metrics.
RAY_RESULT_KEYS = frozenset({
    "timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
    "iterations_since_restore", "done", "should_checkpoint", "checkpoint_dir_name", "trial_id", "date",
    "hostname", "node_ip", "config", "experiment_tag", "experiment_id",
})

def experiment_url(server: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs (the parent run and its nested trials)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?{UI_QUERY}"


class TrackingUnavailableError(RuntimeError):
    """The tracking store cannot be reached."""


# ------------------------------------------------------------------------------ URIs
SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` tracking URI (``sqlite:////abs`` is absolute), else None.
    The one place a tracking URI is taken apart."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlruns.db``.

    Relative SQLite paths and plain folders become absolute, so Ray workers (whose working
    directory is their trial folder) write to the same store as the driver.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    database = sqlite_path(uri)
    if database is not None:
        return SQLITE + str(database.expanduser().resolve())
    if "://" not in uri:  # a folder: MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def default_artifact_location(uri: str, experiment_name: str) -> Optional[str]:
    """For a SQLite store, ``mlartifacts/<experiment>`` next to the database; other stores choose."""
    database = sqlite_path(uri)
    if database is not None:
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name)
        return (database.parent / DEFAULT_ARTIFACT_DIR / folder).as_uri()
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
    its last part, unless two searched keys share it; a key the config lacks, such as chf's lambda on its
    naive fine-tuning runs, left out; ``trial`` when nothing is searched), led by how
    it ended when that was short of its last task: ``stopped 2/5 · lambda=6.98e4``, ``failed 0/5 · ...``
    (first, so that the runs table's narrow name column shows it), so the three endings tell apart at
    a glance."""
    last = [k.rsplit(".", 1)[-1] for k in search_keys]
    values = config.flat()
    name = " ".join(f"{short if last.count(short) == 1 else key}={_short_number(values[key])}"
                    for key, short in zip(search_keys, last) if key in values) or "trial"
    ending = {STOPPED_EARLY: "stopped", FAILED: "failed", REJECTED: "rejected"}.get(status)
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
