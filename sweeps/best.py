"""Read the best trials of a sweep back from MLflow, as `ExperimentConfig` objects.

Everything comes from the tracking store (runs, metrics, the ``config.yaml`` artifact), so it works
on any machine that reaches the tracking server::

    import sweeps
    config = sweeps.best_config("ewc_lambda", tracking_uri="http://mlflow:5000")
    result = clcore.run(config)           # same seed, same device: the trial's accuracy matrix

Candidates are the trial runs of the sweep's experiment (every invocation of the sweep) that saw all
tasks (``clsweep.status = finished``): a trial the scheduler stopped early was scored on fewer tasks,
so its value does not compare. The metric is the sweep's objective unless given; it is read as the
trial's last reported value (the value after the last task).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clcore.config import ExperimentConfig
from sweeps import mlflow_store as T
from sweeps.spec import PROTOCOLS, EndOfTraining, Rounds

# Metrics that are better when lower, for a metric given without a mode.
LOWER_IS_BETTER = ("forgetting", "intransigence", "loss", "penalty", "penalty_to_loss_ratio")


class SweepNotFoundError(LookupError):
    """No MLflow experiment, or no finished trial, for this sweep."""


@dataclass(frozen=True)
class BestRun:
    """A trial read back from MLflow."""

    config: ExperimentConfig
    metrics: dict[str, float]  # the run's last value of every metric
    run_id: str
    trial_id: str
    metric: str  # the metric it was ranked by
    mode: str


def best_run(sweep_name: str, metric: Optional[str] = None, tracking_uri: Optional[str] = None,
             mode: Optional[str] = None) -> BestRun:
    """The best finished trial of ``sweep_name``: config, metrics, run id."""
    return top_runs(sweep_name, 1, metric, tracking_uri, mode)[0]


def best_config(sweep_name: str, metric: Optional[str] = None, tracking_uri: Optional[str] = None,
                mode: Optional[str] = None) -> ExperimentConfig:
    """The `ExperimentConfig` of the best finished trial of ``sweep_name`` (with a prefix protocol, on the
    stream its evaluation trains: see `_evaluated`; with per_task, its schedule)."""
    return best_run(sweep_name, metric, tracking_uri, mode).config


def top_configs(sweep_name: str, k: int = 5, metric: Optional[str] = None, tracking_uri: Optional[str] = None,
                mode: Optional[str] = None) -> list[ExperimentConfig]:
    """The configs of the ``k`` best finished trials, best first."""
    return [r.config for r in top_runs(sweep_name, k, metric, tracking_uri, mode)]


def top_runs(sweep_name: str, k: int = 5, metric: Optional[str] = None, tracking_uri: Optional[str] = None,
             mode: Optional[str] = None) -> list[BestRun]:
    """The ``k`` best finished trials, best first (a per_task or chf sweep: its schedule alone, `_schedule`).

    ``metric`` defaults to the sweep's objective (tag ``clsweep.metric`` of its newest parent run)
    and ``mode`` to the sweep's mode for that metric, else ``min`` for forgetting, intransigence and
    losses and ``max`` for everything else. ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI``,
    else the embedded ``sqlite:///mlruns.db``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    from mlflow import MlflowClient

    uri = T.resolve_tracking_uri(tracking_uri)
    if T.sqlite_path(uri) is not None and not T.sqlite_path(uri).exists():
        raise SweepNotFoundError(f"no MLflow store at {uri} (is this the folder the sweep ran in?); pass "
                                 f"tracking_uri= (clsweep best --tracking-uri) or set MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(sweep_name)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise SweepNotFoundError(f"no sweep named {sweep_name!r} in the MLflow store {uri} (sweeps there: "
                                 f"{', '.join(names) or 'none'}); pass tracking_uri= or set MLFLOW_TRACKING_URI "
                                 f"to read another store")
    metric, mode, parent = _objective(client, experiment.experiment_id, metric, mode)
    tags = parent.data.tags if parent else {}
    if issubclass(PROTOCOLS.get(tags.get(T.PROTOCOL_TAG), EndOfTraining), Rounds):  # per_task, chf: a schedule
        return [_schedule(client, parent, sweep_name, uri)]
    order = "DESC" if mode == "max" else "ASC"
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{T.KIND_TAG}` = 'trial' and tags.`{T.STATUS_TAG}` = '{T.FINISHED}'",
                              max_results=max(k, 50),  # ties: the first trial, as the runner picks
                              order_by=[f"metrics.`{metric}` {order}", f"tags.`{T.TRIAL_ID_TAG}` ASC"])
    runs = [r for r in runs if metric in r.data.metrics][:k]
    if not runs:
        raise SweepNotFoundError(f"sweep {sweep_name!r} in {uri} has no finished trial with metric {metric!r} "
                                 f"(has the sweep run to the end? `clsweep status` tells; if its results are only in "
                                 f"Ray storage, `clsweep sync PATH` uploads them)")
    return [BestRun(_evaluated(_config(client, r.info.run_id), tags), dict(r.data.metrics), r.info.run_id,
                    r.data.tags[T.TRIAL_ID_TAG], metric, mode) for r in runs]


def _evaluated(config: ExperimentConfig, parent_tags: dict) -> ExperimentConfig:
    """A trial's config as its sweep's protocol evaluates it: a prefix protocol's trials trained the
    prefix alone (``benchmark.task_range``), two_phase's another benchmark; the chosen values train the
    evaluation stream, the target's."""
    if parent_tags.get(T.PROTOCOL_TAG, "end_of_training") != "end_of_training":
        config.benchmark.task_range = json.loads(parent_tags[T.EVALUATION_RANGE_TAG])
        for key, value in json.loads(parent_tags.get(T.EVALUATION_BENCHMARK_TAG, "{}")).items():
            setattr(config.benchmark, key, value)
        config.validate()
    return config


def _schedule(client, parent, sweep_name: str, uri: str) -> BestRun:
    """A per_task or chf sweep's choice: no one trial but the schedule of the values each round kept, the
    parent run's ``best_config.yaml`` (its ``schedule:``), with the parent's metrics (``evaluation_*``:
    the schedule trained on fresh seeds)."""
    metric = f"evaluation_{parent.data.tags[T.METRIC_TAG]}"
    if metric not in parent.data.metrics:
        raise SweepNotFoundError(f"sweep {sweep_name!r} in {uri} has no schedule evaluated yet (has the "
                                 f"sweep run to the end? `clsweep status` tells)")
    with tempfile.TemporaryDirectory(prefix="clsweep-") as tmp:
        config = ExperimentConfig.from_yaml(Path(client.download_artifacts(parent.info.run_id, "best_config.yaml", tmp)))
    return BestRun(config, dict(parent.data.metrics), parent.info.run_id, "schedule", metric, "max")


def _objective(client, experiment_id: str, metric: Optional[str], mode: Optional[str]):
    """The metric and mode to rank by, and the sweep's newest parent run (None: none; it names both)."""
    parents = client.search_runs([experiment_id], f"tags.`{T.KIND_TAG}` = 'sweep'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    tags = parents[0].data.tags if parents else {}
    sweep_metric, sweep_mode = tags.get(T.METRIC_TAG), tags.get(T.MODE_TAG)
    metric = metric or sweep_metric
    if metric is None:
        raise SweepNotFoundError("the sweep has no parent run naming its metric; pass metric=")
    if mode is None:
        mode = sweep_mode if metric == sweep_metric and sweep_mode else (
            "min" if metric.endswith(LOWER_IS_BETTER) else "max")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return metric, mode, (parents[0] if parents else None)


def _config(client, run_id: str) -> ExperimentConfig:
    with tempfile.TemporaryDirectory(prefix="clsweep-") as tmp:
        path = client.download_artifacts(run_id, T.CONFIG_ARTIFACT, tmp)
        return ExperimentConfig.from_yaml(Path(path))
