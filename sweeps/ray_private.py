"""The places where the sweep service reaches into Ray Tune's private API, and nowhere else.

Each is written against Ray ``WRITTEN_FOR``; `tests/test_ray_private.py` checks that the
installed Ray still has what they use and fails naming this module when an upgrade moves it.

- `attach_callbacks`: driver callbacks hold live state (open files, MLflow clients) that must not be
  pickled into ``tuner.pkl`` (a resume would restore it stale), and `tune.Tuner.restore` takes no
  callbacks; so they are added to the Tuner's run config after it was written.
- `BestOfCompleteReporter`: Ray's trial table names a "current best trial" from any trial's last
  result; a trial stopped early after one easy task would win, so only trials that saw every task count.
- `snapshot_checkpoints`: which trials Ray's experiment snapshot lists and which checkpoint folders
  it would restore them from, read from the snapshot's JSON (the checkpoint manager is a pickle in
  it, searched as bytes, never unpickled), so that a resume can put back a folder Ray deleted after
  its last snapshot (it keeps ``num_to_keep`` checkpoints, and forces a snapshot only after that many).
- `started_here`: whether this process started the Ray it is connected to (a local instance) or
  joined a cluster, from the driver's node object; actors are reused on a local instance only.
- `skip_on_restore`: Ray's restore retries every failed trial or none (``resume_errored``,
  ``restart_errored``); a trial whose own training failed would fail the same way again, so the
  snapshot is edited to show it finished (its JSON state's ``status``), and Ray's restore passes it by.
- The schedulers (`Asha`, `HyperBand`, `Median`, `Pbt`, `Fifo`): Ray's, with `Recorded` mixed in, which
  (1) keeps the Tune controller that hands it trials, so that `snapshot_before_training` can make Ray
  write its experiment snapshot (trials, searcher state) before a trial trains: every trial that
  reports is then in the snapshot a resume restores, with its searcher suggestion; and (2) refills,
  from each trial's own record (``tasks.jsonl``), the state a resumed scheduler lost (Ray keeps no
  scheduler state in its snapshot): ASHA's rung values, the median rule's results, HyperBand's
  brackets (each trial's written down as it joins, its halvings replayed: `HyperBand`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from ray import tune
from ray.tune import schedulers as S
from ray.tune.experiment import Trial
from ray.tune.schedulers.hyperband import _Bracket

from sweeps.storage import record_bracket, recorded_brackets, task_history

WRITTEN_FOR = "2.60"


def attach_callbacks(tuner: tune.Tuner, callbacks: list) -> None:
    """Add ``callbacks`` to ``tuner``'s run config, after ``tuner.pkl`` was written (private: ``_local_tuner``)."""
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks = [*(run_config.callbacks or []), *callbacks]


class BestOfCompleteReporter(tune.CLIReporter):
    """`tune.CLIReporter` whose current best trial is the best of those whose ``time_attr`` reached
    ``n_tasks`` (private: overrides ``_current_best_trial``)."""

    def __init__(self, n_tasks: int, time_attr: str, **kwargs):
        super().__init__(**kwargs)
        self.n_tasks, self.time_attr = n_tasks, time_attr

    def _current_best_trial(self, trials):
        return super()._current_best_trial(
            [t for t in trials if (t.last_result or {}).get(self.time_attr) == self.n_tasks])


class Recorded:
    """Scheduler mixin (see the module docstring)."""

    _controller = None

    def on_trial_add(self, tune_controller, trial) -> None:
        # Ray hands schedulers a TrialRunnerWrapper around the controller (private: _tune_controller)
        self._controller = getattr(tune_controller, "_tune_controller", tune_controller)
        super().on_trial_add(tune_controller, trial)
        restored = getattr(trial.storage, "trial_dir_name", None)  # a new trial has no folder yet
        rows = task_history(trial.path) if restored else []
        if rows:
            self.refill(trial, rows)

    def refill(self, trial, rows: list[dict]) -> None:
        """Put back what this scheduler knew of a restored trial's reported tasks."""

    def snapshot(self) -> None:
        """Ray's experiment snapshot now, written to storage before returning (private: controller.checkpoint)."""
        if self._controller is not None:
            self._controller.checkpoint(force=True, wait=True)

    def __getstate__(self):
        state = dict(self.__dict__)  # the controller stays out of tuner.pkl
        state.pop("_controller", None)
        return state


class Asha(Recorded, S.ASHAScheduler):
    def refill(self, trial, rows: list[dict]) -> None:
        # private: _trial_info (trial id -> its bracket), _Bracket._rungs [(milestone, {trial id: signed value})]
        at = {row.get(self._time_attr): row.get(self._metric) for row in rows}
        for milestone, recorded in self._trial_info[trial.trial_id]._rungs:
            if at.get(milestone) is not None:
                recorded[trial.trial_id] = self._metric_op * at[milestone]


class Median(Recorded, S.MedianStoppingRule):
    def refill(self, trial, rows: list[dict]) -> None:
        self._results[trial] = list(rows)  # private: _results, trial -> its results in order


class HyperBand(Recorded, S.HyperBandScheduler):
    """Ray's synchronous HyperBand, whose brackets survive a resume. Ray re-adds a restored sweep's trials
    newest result first and a finished one as live with no result, so Ray's own placement would put trials
    in brackets not theirs and leave a bracket waiting forever on a trial that ended. Instead each trial's
    bracket is written down as it joins (`storage.record_bracket`); a restored trial goes back into its
    own, and before any trial runs on, each such bracket is replayed from its trials' records: every
    halving whose milestone all its live trials had reached is made again on the results recorded there
    (Ray's own `successive_halving`, trials in the order they joined, as Ray has them: the same choice), a trial
    it dropped that is still live is stopped, a trial waiting at the bracket's milestone is paused again,
    and a bracket whose trials all wait is processed. A trial restored with no bracket written down (a
    sweep started before they were) gets Ray's placement when live, none when it had ended.
    (Private: ``_hyperbands``, ``_state``, ``_trial_info``, ``_create_bracket``, ``_get_r0``,
    ``_process_bracket``, `_Bracket`'s ``_all_trials``, ``_live_trials``, ``_halves``, ``_cumul_r``,
    ``_completed_progress``, ``is_being_processed``; the controller's ``_set_trial_status``.) Its brackets'
    last stage runs to the end of the stream (`_ToTheEnd`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._recorded: Optional[dict] = None  # trial id -> (band, bracket), read at the first restored trial
        self._unsettled: list = []  # brackets holding restored trials, replayed before a trial runs

    def __getstate__(self):
        return {**super().__getstate__(), "_recorded": None, "_unsettled": []}

    def _create_bracket(self, s):
        return _ToTheEnd(time_attr=self._time_attr, max_trials=self._get_n0(s), init_t_attr=self._get_r0(s),
                         max_t_attr=self._max_t_attr, eta=self._eta, s=s, stop_last_trials=self._stop_last_trials)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._controller = getattr(tune_controller, "_tune_controller", tune_controller)
        experiment_dir = Path(trial.storage.experiment_fs_path)
        if getattr(trial.storage, "trial_dir_name", None):  # restored: a new trial has no folder yet
            if self._recorded is None:
                self._recorded = recorded_brackets(experiment_dir)
            if trial.trial_id in self._recorded:
                return self._put_back(trial, *self._recorded[trial.trial_id])
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                return None
        self._settle(tune_controller)
        S.HyperBandScheduler.on_trial_add(self, tune_controller, trial)
        bracket, band = self._trial_info[trial]
        place = band, self._hyperbands[band].index(bracket)
        record_bracket(experiment_dir, trial.trial_id, *place)
        if self._recorded is not None:
            self._recorded[trial.trial_id] = place
        return None

    def _put_back(self, trial, band: int, index: int) -> None:
        while len(self._hyperbands) <= band:
            self._hyperbands.append([])
        brackets = self._hyperbands[band]
        while len(brackets) <= index:  # as Ray builds a band: a bracket too small to run stays None
            s = len(brackets)
            brackets.append(self._create_bracket(s) if self._get_r0(s) else None)
        bracket = brackets[index]
        bracket._all_trials.append(trial)
        self._trial_info[trial] = bracket, band
        if (band, index) >= (self._state["band_idx"], self._index_of_current()):
            self._state = {"bracket": bracket, "band_idx": band}
        if bracket not in self._unsettled:
            self._unsettled.append(bracket)

    def _index_of_current(self) -> int:
        current = self._state["bracket"]
        return -1 if current is None else self._hyperbands[self._state["band_idx"]].index(current)

    def _settle(self, tune_controller) -> None:
        """Replay each bracket that holds restored trials (see the class docstring), once."""
        while self._unsettled:
            bracket = self._unsettled.pop(0)
            order = {trial_id: i for i, trial_id in enumerate(self._recorded)}  # as they joined
            bracket._all_trials.sort(key=lambda t: order[t.trial_id])
            members = bracket._all_trials
            at = {t: {int(r[self._time_attr]): r for r in task_history(Path(t.path))} for t in members}
            reached = {t: max(at[t], default=0) for t in members}
            live = {t for t in members if t.status not in (Trial.TERMINATED, Trial.ERROR)}
            going, dropped = list(members), []
            while bracket._halves > 0 and all(reached[t] >= bracket._cumul_r for t in going if t in live):
                milestone = bracket._cumul_r
                bracket._live_trials = {t: at[t][milestone] for t in going if reached[t] >= milestone}
                bracket.is_being_processed = True  # as Ray leaves it after a bracket's first halving
                going, bad = bracket.successive_halving(self._metric, self._metric_op)
                dropped += [t for t in bad if t in live]
            bracket._live_trials = {t: at[t].get(reached[t]) for t in going if t in live}
            bracket._completed_progress = sum(reached.values())
            for trial in dropped:
                tune_controller.stop_trial(trial)
            for trial in bracket._live_trials:
                if reached[trial] >= bracket._cumul_r:  # waiting for the rest of its bracket
                    self._controller._set_trial_status(trial, Trial.PAUSED)
            if bracket._live_trials and bracket.cur_iter_done():
                self._process_bracket(tune_controller, bracket)

    def choose_trial_to_run(self, tune_controller):
        self._settle(tune_controller)
        return super().choose_trial_to_run(tune_controller)


class _ToTheEnd(_Bracket):
    """A HyperBand bracket whose last stage runs to ``max_t``. Ray's stops at r0 * eta^s, short of max_t
    whenever max_t is not r0 times a power of eta (5 tasks, eta 3: at task 3; 10 tasks: at task 9), so
    no trial of such a bracket could see every task, and only complete trials can be a sweep's best."""

    def successive_halving(self, metric, metric_op):
        good, bad = super().successive_halving(metric, metric_op)
        if self._halves == 0:
            self._r = self._cumul_r = self._max_t_attr
        return good, bad


class Pbt(Recorded, S.PopulationBasedTraining):
    pass


class Fifo(Recorded, S.FIFOScheduler):
    pass


def snapshot_checkpoints(experiment_dir: Path) -> Optional[dict[str, set[str]]]:
    """``{trial id: checkpoint folder names}`` from Ray's newest experiment snapshot in ``experiment_dir``
    (private: ``experiment_state-<time>.json``'s ``trial_data``, each trial's JSON state and its run
    metadata with the checkpoint manager as a hex pickle); None when there is no snapshot."""
    files = sorted(Path(experiment_dir).glob("experiment_state-*.json"))  # Ray restores the newest
    if not files:
        return None
    trials = {}
    for state, metadata in json.loads(files[-1].read_text())["trial_data"]:
        manager = json.loads(metadata).get("checkpoint_manager") or {}
        pickled = bytes.fromhex(manager.get("value", "")) if isinstance(manager, dict) else b""
        trials[json.loads(state)["trial_id"]] = {name.decode() for name in re.findall(rb"checkpoint_\d{6}", pickled)}
    return trials


def started_here() -> bool:
    """Whether this process started the Ray instance it is connected to (``ray.init`` of a local
    instance: this process holds its head node) rather than joined a cluster (private:
    ``ray._private.worker._global_node.head``)."""
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    return bool(node is not None and node.head)


def skip_on_restore(experiment_dir: Path, trial_ids: set[str]) -> None:
    """Have Ray's restore from ``experiment_dir``'s newest experiment snapshot pass by the trials
    ``trial_ids``, as it passes by the finished ones, whatever it is told to do with failed trials
    (private: ``experiment_state-<time>.json``'s ``trial_data``, each trial's JSON state with its
    ``status``). The sweep's own ledger still holds how they ended."""
    files = sorted(Path(experiment_dir).glob("experiment_state-*.json"))
    if not files or not trial_ids:
        return
    snapshot = json.loads(files[-1].read_text())
    for row in snapshot["trial_data"]:
        state = json.loads(row[0])
        if state["trial_id"] in trial_ids:
            state["status"] = "TERMINATED"
            row[0] = json.dumps(state, indent=2)
    written = files[-1].with_suffix(".tmp")
    written.write_text(json.dumps(snapshot))
    written.replace(files[-1])


def snapshot_before_training(tuner: tune.Tuner) -> tune.Callback:
    """A driver callback that has Ray write its experiment snapshot when a trial starts, before its
    training is called (Ray calls ``on_trial_start`` right before it; a reused actor too), through
    ``tuner``'s `Recorded` scheduler (private: ``_local_tuner._tune_config``: a restored Tuner's
    scheduler is the one unpickled from ``tuner.pkl``)."""
    snapshot = getattr(tuner._local_tuner._tune_config.scheduler, "snapshot", None)  # a sweep from before Recorded: none

    class SnapshotBeforeTraining(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            if snapshot is not None:
                snapshot()

    return SnapshotBeforeTraining()


__all__ = ["WRITTEN_FOR", "attach_callbacks", "BestOfCompleteReporter", "Recorded", "Asha", "Median", "HyperBand", "Pbt",
           "Fifo", "started_here", "skip_on_restore", "snapshot_before_training", "snapshot_checkpoints"]
