"""One sweep, its driver SIGKILLed at four deterministic points and resumed after each, on a real local
Ray with a real MLflow store: every trial exactly once, none lost, no point trained twice, ASHA
stopping only at its rungs, MLflow runs equal to trials, no Ray process left behind.

The kill points are events in the sweep's own storage, watched every few milliseconds, not sleeps:

1. ``before any report``: the ledger has a trial's start and no trial has written a task;
2. ``first report``: a trial's first ``tasks.jsonl`` row appears (its checkpoint is being written,
   and Ray's periodic snapshot, every 10 s or more, has not seen the result);
3. ``checkpoint write``: a new ``checkpoint_*`` folder appears in a trial's folder;
4. ``after the last trial``: the ledger has every trial's end and the driver has not written its summary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from sweeps.spec import OBJECTIVE_ATTR  # noqa: E402
from sweeps.storage import CHECKPOINT_DIRS, SUMMARY_FILE, TASKS_FILE, TRIALS_FILE, load_sweep  # noqa: E402

N_TRIALS, N_TASKS, RUNGS = 6, 5, (2, 4)  # ASHA: grace 2, reduction 2, max_t 5


def _rows(file: Path) -> list[dict]:
    try:
        text = file.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


class Storage:
    """What the watcher reads of the sweep's folder."""

    def __init__(self, folder: Path):
        self.folder = folder

    def ledger(self, event: str) -> set[str]:
        return {r["trial_id"] for r in _rows(self.folder / TRIALS_FILE) if r.get("event") == event}

    def reported(self) -> dict[str, int]:
        return {p.parent.name: len(_rows(p)) for p in self.folder.glob(f"trial_*/{TASKS_FILE}")}

    def checkpoints(self) -> set[str]:
        return {str(p.relative_to(self.folder)) for p in self.folder.glob(f"trial_*/{CHECKPOINT_DIRS}")}


def _kill_when(driver: subprocess.Popen, reached, log: Path, timeout: float = 240) -> bool:
    """SIGKILL the driver's process group (the driver and the local Ray it started) the moment
    ``reached()`` is true; False if the driver ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if reached():
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            return True
        if driver.poll() is not None:
            return False
        time.sleep(0.005)
    os.killpg(driver.pid, signal.SIGKILL)
    raise AssertionError(f"kill point not reached in {timeout} s:\n{log.read_text()[-3000:]}")


def _trial_runs(uri: str) -> int:
    from mlflow import MlflowClient

    experiment = MlflowClient(uri).get_experiment_by_name("kills")
    return 0 if experiment is None else len(MlflowClient(uri).search_runs(
        [experiment.experiment_id], "tags.`clsweep.kind` = 'trial'", max_results=1000))


def _recorded_ray_processes(state_dir: Path) -> list[int]:
    return [pid for file in state_dir.glob("local-ray-*.json") for pid, _ in json.loads(file.read_text())["processes"]]


def _sweep_file(tmp_path: Path, name: str, n_tasks: int, epochs: int, **sections) -> Path:
    """A sweep file of naive trials over ``train.lr`` on the synthetic benchmark, stored in ``tmp_path``."""
    data = {
        "name": name,
        "base": {"benchmark": {"name": "synthetic", "scenario": "task", "n_tasks": n_tasks},
                 "model": {"name": "mlp", "hidden_sizes": [32]}, "strategy": {"name": "naive"},
                 "train": {"optimizer": "sgd", "lr": 0.1, "epochs": epochs, "batch_size": 16, "device": "cpu"}},
        "search": {"train.lr": {"dist": "loguniform", "low": 1e-4, "high": 0.3}},
        "objective": {"metric": "val_average_accuracy"},
        "resources": {"cpu": 1},
        "storage": {"path": str(tmp_path / "results")},
        "max_failures": 1,
        **sections,
    }
    file = tmp_path / f"{name}.yaml"
    file.write_text(yaml.safe_dump(data))
    return file


def _starter(tmp_path: Path, drivers: list):
    """``start(step, *clsweep arguments)``: a `clsweep` driver in a process group of its own, on a local
    Ray of 2 CPUs, its output in ``driver<step>.log``; each appended to ``drivers``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CLSWEEP_STATE_DIR": str(tmp_path / "state")}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)

    def start(step: int, *command: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"driver{step}.log"
        drivers.append(subprocess.Popen([sys.executable, "-m", "sweeps.cli", *command, "--num-cpus", "2"],
                                        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True))
        return drivers[-1], log

    return start


def test_a_driver_killed_at_four_points_and_resumed_runs_every_trial_once(tmp_path):
    from mlflow import MlflowClient

    from sweeps import mlflow_store as M
    from sweeps.localray import _running

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    spec_file = _sweep_file(
        tmp_path, "kills", N_TASKS, 12, tracking={"mlflow": True, "tracking_uri": uri},
        algorithm={"name": "optuna", "num_samples": N_TRIALS, "max_concurrent": 2, "seed": 3, "n_startup_trials": 3},
        scheduler={"name": "asha", "grace_period": RUNGS[0], "reduction_factor": 2})
    folder = tmp_path / "results" / "kills"
    storage = Storage(folder)
    state_dir = tmp_path / "state"
    drivers = []
    start = _starter(tmp_path, drivers)

    seen: dict[str, object] = {}

    def before_any_report() -> bool:
        return bool(storage.ledger("start")) and not storage.reported()

    def first_report() -> bool:
        fresh = [t for t, n in storage.reported().items() if n == 1 and t not in seen.get("reported", ())]
        if fresh:
            seen["first_report"] = fresh[0]
        return bool(fresh)

    def checkpoint_write() -> bool:
        return bool(storage.checkpoints() - seen["checkpoints"])

    def after_last_trial() -> bool:
        return len(storage.ledger("end")) == N_TRIALS and not (folder / SUMMARY_FILE).exists()

    points = [("before any report", before_any_report), ("first report", first_report),
              ("checkpoint write", checkpoint_write), ("after the last trial", after_last_trial)]
    hit, ray_pids = [], []
    try:
        for step, (name, reached) in enumerate(points):
            seen["reported"] = set(storage.reported())
            seen["checkpoints"] = storage.checkpoints()
            driver, log = start(step, *(("run", str(spec_file)) if step == 0 else ("resume", str(folder))))
            if _kill_when(driver, reached, log):
                hit.append(name)
                ray_pids += _recorded_ray_processes(state_dir)
                trials = load_sweep(folder).trials
                print(f"killed at {name}: {len(trials)} trials in storage, {sum(len(t.history) for t in trials)} "
                      f"tasks reported, {_trial_runs(uri)} MLflow trial runs")
        driver, log = start(len(points), "resume", str(folder))
        assert driver.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    assert hit[:3] == [name for name, _ in points[:3]], hit  # the last may find the driver already done

    state = load_sweep(folder)
    ids = [t.trial_id for t in state.trials]
    assert len(ids) == N_TRIALS == len(set(ids)), ids
    assert seen["first_report"].removeprefix("trial_") in ids  # the trial killed after its first report continued
    assert all(t.outcome.ended and t.outcome.value != "failed" for t in state.trials), [t.outcome for t in state.trials]
    values = [t.params["train.lr"] for t in state.trials]
    assert len(set(values)) == N_TRIALS, values  # no point proposed twice
    for trial in state.trials:  # ASHA stops a trial only at a rung, resumed or not
        assert trial.tasks_seen in (*RUNGS, N_TASKS), (trial.trial_id, trial.tasks_seen)
        rows = _rows(Path(trial.path) / TASKS_FILE)
        assert sorted({r["tasks_seen"] for r in rows}) == list(range(1, trial.tasks_seen + 1))
    repeats = sum(len(_rows(Path(t.path) / TASKS_FILE)) - len(t.history) for t in state.trials)
    assert repeats <= 2 * len(hit)  # a kill re-trains at most the task in flight of each running trial

    print(f"after the last resume: {len(ids)} trials, {sum(len(t.history) for t in state.trials)} tasks reported "
          f"({sum(len(_rows(Path(t.path) / TASKS_FILE)) for t in state.trials)} rows), {_trial_runs(uri)} MLflow trial runs")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("kills")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trial_runs = [r for r in runs if r.data.tags.get(M.KIND_TAG) == "trial"]
    assert sorted(r.data.tags[M.TRIAL_ID_TAG] for r in trial_runs) == sorted(ids)
    by_id = {t.trial_id: t for t in state.trials}
    for run in trial_runs:
        trial = by_id[run.data.tags[M.TRIAL_ID_TAG]]
        assert run.data.tags[M.STATUS_TAG] == trial.outcome.tag and run.info.status == "FINISHED", run.data.tags
    parents = [r for r in runs if r.data.tags.get(M.KIND_TAG) == "sweep"]
    assert [p.info.status for p in parents] == ["FINISHED"]

    assert [p for p in ray_pids if _running(p)] == []  # every killed driver's Ray was ended by the next start
    assert not list(state_dir.glob("local-ray-*.json"))


HB_TASKS, HB_TRIALS = 5, 7  # HyperBand, reduction 2.5, max_t 5: bracket 0 runs 3 trials to task 5; bracket 1
HB_MILESTONES = (2, 5)      # cuts its 4 trials at task 2 (the best 2 go on to task 5)


def test_a_hyperband_sweep_killed_mid_bracket_resumes_each_bracket_where_it_was(tmp_path):
    """Ray keeps no scheduler state in its snapshot and re-adds restored trials newest first, finished ones
    as live: a resumed HyperBand must put each trial back in its own bracket with its reported tasks."""
    spec_file = _sweep_file(tmp_path, "hb", HB_TASKS, 3, algorithm={"name": "random", "num_samples": HB_TRIALS, "seed": 5},
                            scheduler={"name": "hyperband", "reduction_factor": 2.5})
    folder = tmp_path / "results" / "hb"
    storage = Storage(folder)
    drivers = []
    start = _starter(tmp_path, drivers)

    # killed once a trial has ended and another waits at bracket 1's milestone
    driver, log = start(0, "run", str(spec_file))
    try:
        assert _kill_when(driver, lambda: storage.ledger("end") and HB_MILESTONES[0] in storage.reported().values(),
                          log), log.read_text()[-3000:]
        ended = storage.ledger("end")
        driver, log = start(1, "resume", str(folder))
        assert driver.wait(timeout=300) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    state = load_sweep(folder)
    trials = sorted(state.trials, key=lambda t: t.trial_id)  # Ray's trial ids count up: creation order
    assert len(trials) == HB_TRIALS == len({t.trial_id for t in trials})
    assert ended <= {t.trial_id for t in trials}
    for trial in trials:  # stopped only at a milestone, each task once after its checkpoint
        assert trial.outcome.ended and trial.outcome.value != "failed", (trial.trial_id, trial.outcome)
        assert trial.tasks_seen in HB_MILESTONES, (trial.trial_id, trial.tasks_seen)
        assert [r["tasks_seen"] for r in trial.history] == list(range(1, trial.tasks_seen + 1))
    assert [t.tasks_seen for t in trials[:3]] == [HB_TASKS] * 3  # bracket 0: no halving
    second = trials[3:]  # bracket 1: the worst two at task 2 stopped there, the best two went on
    at_milestone = {t.trial_id: t.history[HB_MILESTONES[0] - 1][OBJECTIVE_ATTR] for t in second}
    best = sorted(at_milestone, key=at_milestone.get)[2:]  # stable: a tie goes to the later trial, as in Ray
    assert {t.trial_id: t.tasks_seen for t in second} == {
        t.trial_id: HB_TASKS if t.trial_id in best else HB_MILESTONES[0] for t in second}, at_milestone
