"""The worker side of MLflow tracking: a trial logs itself into its nested run, task by task, from
whichever Ray worker runs it (`TrialLogger`, configured by the picklable `TrackingSettings`).
See `sweeps.tracking` for the whole picture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clcore.config import ExperimentConfig


from sweeps.mlflow_store import (CONFIG_ARTIFACT, KIND_TAG, NODE_IDS_TAG, NODE_ID_TAG, PARENT_RUN_TAG, RUNNING,
                                 STATUS_TAG, STEP_METRIC, SWEEP_ID_TAG, Store, TRIAL_ID_TAG, check_reachable, log,
                                 node_tags, trial_metrics, trial_run_name)


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
