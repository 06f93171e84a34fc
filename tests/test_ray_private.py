"""What `sweeps.ray_private` uses of Ray Tune's private API is still there (it was written for Ray
``WRITTEN_FOR``); a failure here names what moved, so an upgrade breaks this test, not a sweep."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray import tune  # noqa: E402

from sweeps import ray_private  # noqa: E402

MOVED = f"sweeps/ray_private.py was written for Ray {ray_private.WRITTEN_FOR}, and Ray {ray.__version__} changed"


def test_the_installed_ray_is_the_one_the_private_uses_were_written_for():
    assert ray.__version__.startswith(ray_private.WRITTEN_FOR + "."), \
        f"{MOVED}: re-check its two functions against this Ray, then update WRITTEN_FOR"


def test_a_tuner_still_exposes_its_run_config_through_local_tuner(tmp_path):
    tuner = tune.Tuner(lambda config: {"x": 1}, run_config=tune.RunConfig(storage_path=str(tmp_path), name="probe"))
    assert hasattr(tuner, "_local_tuner"), f"{MOVED}: Tuner._local_tuner is gone"
    marker = tune.Callback()
    ray_private.attach_callbacks(tuner, [marker])
    assert tuner._local_tuner.get_run_config().callbacks[-1] is marker, f"{MOVED}: the run config is a copy now"


def test_cli_reporter_still_picks_its_best_trial_in_current_best_trial():
    method = getattr(tune.CLIReporter, "_current_best_trial", None)
    assert method is not None, f"{MOVED}: CLIReporter._current_best_trial is gone"
    assert list(inspect.signature(method).parameters) == ["self", "trials"], f"{MOVED}: its signature"

    class Trial:
        def __init__(self, tasks, value):
            self.last_result = {"tasks": tasks, "acc": value}
            self.status = "TERMINATED"

        def __str__(self):
            return f"trial {self.last_result}"

    reporter = ray_private.BestOfCompleteReporter(3, "tasks", metric="acc", mode="max")
    early, complete = Trial(1, 0.99), Trial(3, 0.7)
    best, _ = reporter._current_best_trial([early, complete])
    assert best is complete  # the early-stopped trial's higher value does not count


def test_the_recorded_scheduler_snapshots_before_training_and_the_snapshot_names_its_checkpoints(tmp_path):
    """A real Tuner on a local Ray: the snapshot callback reaches the controller through the scheduler
    (written before the trial's training was called: the trial is in the first snapshot), and
    `snapshot_checkpoints` reads the trial and Ray's two kept checkpoints back from the JSON."""
    def checkpointing(config):  # defined here: pickled by value (workers cannot import test modules)
        import tempfile

        for step in range(3):
            with tempfile.TemporaryDirectory() as folder:
                Path(folder, "x").write_text(str(step))
                tune.report({"step": step + 1, "acc": 0.5}, checkpoint=tune.Checkpoint.from_directory(folder))

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        scheduler = ray_private.Fifo()
        tuner = tune.Tuner(checkpointing, tune_config=tune.TuneConfig(scheduler=scheduler, metric="acc", mode="max"),
                           run_config=tune.RunConfig(storage_path=str(tmp_path), name="probe", verbose=0,
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
        assert tuner._local_tuner._tune_config.scheduler is scheduler, f"{MOVED}: the Tuner copies its scheduler"
        snapshots = []

        class Probe(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                snapshots.append(ray_private.snapshot_checkpoints(tmp_path / "probe"))

        ray_private.attach_callbacks(tuner, [ray_private.snapshot_before_training(tuner), Probe()])
        trial_id = tuner.fit()[0].metrics["trial_id"]
    finally:
        if started_here:
            ray.shutdown()
    assert scheduler._controller is not None and hasattr(scheduler._controller, "checkpoint"), \
        f"{MOVED}: TrialRunnerWrapper._tune_controller"
    assert snapshots == [{trial_id: set()}], f"{MOVED}: the trial is not in the snapshot written as it starts"
    assert ray_private.snapshot_checkpoints(tmp_path / "probe") == {trial_id: {"checkpoint_000001", "checkpoint_000002"}}
    assert "_controller" not in scheduler.__getstate__()  # never pickled into tuner.pkl


def test_started_here_tells_a_local_instance_from_a_joined_cluster():
    """True in the process that started a local Ray; False in a driver that joined it (a cluster)."""
    import subprocess
    import sys

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        assert ray_private.started_here() is started, f"{MOVED}: ray._private.worker._global_node.head"
        address = ray.get_runtime_context().gcs_address
        join = (f"import ray; ray.init(address={address!r}); from sweeps import ray_private; "
                f"print('started_here', ray_private.started_here())")
        done = subprocess.run([sys.executable, "-c", join], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[1])
        assert "started_here False" in done.stdout, done.stdout[-1000:] + done.stderr[-2000:]
    finally:
        if started:
            ray.shutdown()
    assert ray_private.started_here() is False  # no Ray at all


def test_a_restored_asha_stops_a_trial_only_at_its_rungs(tmp_path):
    """Ray keeps no scheduler state in its snapshot: a fresh ASHA would judge a resumed trial at task 3,
    where there is no rung, against the rung-2 values. Refilled from the trial's record, it does not."""
    import json
    from types import SimpleNamespace

    def trial(name: str, values: list[float]):
        folder = tmp_path / f"trial_{name}"
        folder.mkdir()
        folder.joinpath("tasks.jsonl").write_text(
            "".join(json.dumps({"tasks_seen": k + 1, "obj": v}) + "\n" for k, v in enumerate(values)))
        return SimpleNamespace(trial_id=name, path=str(folder), storage=SimpleNamespace(trial_dir_name=folder.name))

    def asha(cls):
        return cls(time_attr="tasks_seen", max_t=5, grace_period=2, reduction_factor=2, metric="obj", mode="max")

    good = [trial(f"g{i}", [0.9, 0.9]) for i in range(3)]
    slow = trial("slow", [0.2, 0.3])  # passed rung 2 before the driver died (the cut then was lower)
    for cls in (tune.schedulers.ASHAScheduler, ray_private.Asha):
        scheduler = asha(cls)
        for t in (*good, slow):
            scheduler.on_trial_add(None, t)
        for t in good:  # their rung-2 results, reported after the resume (a plain ASHA knows only these)
            scheduler.on_trial_result(None, t, {"tasks_seen": 2, "obj": 0.9})
        decision = scheduler.on_trial_result(None, slow, {"tasks_seen": 3, "obj": 0.35})
        if cls is ray_private.Asha:
            rung2 = dict(scheduler._trial_info["slow"]._rungs)[2]
            assert rung2["slow"] == pytest.approx(0.3) and rung2["g0"] == pytest.approx(0.9), f"{MOVED}: ASHA's rungs"
            assert decision == "CONTINUE"  # next judged at rung 4
        else:
            assert decision == "STOP"  # what a plain ASHA does at task 3: the bug refilling mends



def test_a_restored_hyperband_puts_each_trial_back_in_its_bracket_and_replays_its_halvings(tmp_path):
    """Ray re-adds restored trials newest first, finished ones as live with no result: a plain HyperBand
    then waits forever on a finished trial. Ours reads each trial's bracket back, replays the halving
    its records show was due (on the recorded results: the same choice), stops the trial it dropped,
    and pauses a trial waiting at its milestone. max_t 4, reduction 2: bracket 0's 3 trials run to task
    4; bracket 1's 3 trials are halved at task 2, and the best 2 run to task 4."""
    import json

    from sweeps.storage import record_bracket

    class Trial:  # what the scheduler reads of a restored Ray trial
        def __init__(self, folder: Path, name: str, values: list[float], status: str, bracket: int):
            self.trial_id, self.status = name, status
            (folder / f"trial_{name}").mkdir(parents=True)
            (folder / f"trial_{name}" / "tasks.jsonl").write_text(
                "".join(json.dumps({"tasks_seen": k + 1, "obj": v}) + "\n" for k, v in enumerate(values)))
            self.path = str(folder / f"trial_{name}")
            self.storage = type("Storage", (), {"trial_dir_name": f"trial_{name}", "experiment_fs_path": str(folder)})
            record_bracket(folder, name, 0, bracket)

    class Controller:  # what a scheduler calls of Ray's controller here
        def __init__(self, scheduler):
            self.scheduler, self.stopped = scheduler, []

        def stop_trial(self, trial):
            self.stopped.append(trial.trial_id)
            self.scheduler.on_trial_remove(self, trial)
            trial.status = "TERMINATED"

        def _set_trial_status(self, trial, status):
            trial.status = status

    def restore(name: str, bracket1: dict[str, tuple[list[float], str]], scheduler_class=ray_private.HyperBand):
        folder = tmp_path / name
        done = [Trial(folder, f"a{i}", [0.9] * 4, "TERMINATED", 0) for i in range(3)]
        trials = {n: Trial(folder, n, values, status, 1) for n, (values, status) in bracket1.items()}
        scheduler = scheduler_class(time_attr="tasks_seen", max_t=4, reduction_factor=2, metric="obj", mode="max")
        controller = Controller(scheduler)
        for t in (*list(trials.values())[::-1], *done):  # Ray's order: newest result first
            scheduler.on_trial_add(controller, t)
        if scheduler_class is ray_private.HyperBand:
            scheduler.choose_trial_to_run(controller)  # settles the brackets before any trial runs
        return scheduler, controller, {n: t.status for n, t in trials.items()}

    plain, _, _ = restore("plain", {}, tune.schedulers.HyperBandScheduler)
    assert not plain._hyperbands[0][0].cur_iter_done()  # Ray's own waits forever on bracket 0's finished trials

    # killed with bracket 1 at its milestone, before the halving: it is made now, b1 the worst
    scheduler, controller, status = restore("before", {"b0": ([0.5, 0.8], "PENDING"), "b1": ([0.5, 0.6], "PENDING"),
                                                       "b2": ([0.4, 0.7], "PENDING")})
    brackets = scheduler._hyperbands[0]
    assert [sorted(t.trial_id for t in b._all_trials) for b in brackets] == [["a0", "a1", "a2"], ["b0", "b1", "b2"]], \
        f"{MOVED}: HyperBand's brackets"
    assert brackets[0]._live_trials == {} and scheduler._state["bracket"] is brackets[1]
    assert controller.stopped == ["b1"] and status == {"b0": "PENDING", "b1": "TERMINATED", "b2": "PENDING"}
    assert (brackets[1]._cumul_r, brackets[1]._n) == (4, 2)
    assert scheduler.choose_trial_to_run(controller).trial_id in ("b0", "b2")

    # killed after it: b1 stopped, b0 trained on to task 4 and waits there for b2 (at task 3), paused
    scheduler, controller, status = restore("after", {"b0": ([0.5, 0.8, 0.8, 0.8], "PENDING"),
                                                      "b1": ([0.5, 0.6], "TERMINATED"),
                                                      "b2": ([0.4, 0.7, 0.7], "PENDING")})
    assert controller.stopped == [] and status == {"b0": "PAUSED", "b1": "TERMINATED", "b2": "PENDING"}
    assert scheduler.choose_trial_to_run(controller).trial_id == "b2"

    # killed with both at task 4: the bracket is finished, and both are stopped there
    scheduler, controller, status = restore("end", {"b0": ([0.5, 0.8, 0.8, 0.8], "PENDING"),
                                                    "b1": ([0.5, 0.6], "TERMINATED"),
                                                    "b2": ([0.4, 0.7, 0.7, 0.7], "PENDING")})
    assert sorted(controller.stopped) == ["b0", "b2"] and scheduler.choose_trial_to_run(controller) is None


def test_hyperbands_last_stage_runs_to_the_end_of_the_stream():
    """Ray's bracket stops its last stage at r0 * eta^s: with 5 tasks and eta 3 at task 3, where no trial
    of that bracket could be complete. Ours runs it to task 5; the earlier milestones are Ray's."""
    def milestones(scheduler_class, max_t: int, eta: float) -> list[list[int]]:
        scheduler = scheduler_class(time_attr="tasks_seen", max_t=max_t, reduction_factor=eta, metric="obj", mode="max")
        out = []
        for s in range(scheduler._s_max_1):
            if not scheduler._get_r0(s):
                continue
            bracket, stages = scheduler._create_bracket(s), []
            stages.append(bracket._cumul_r)
            while bracket._halves > 0:
                bracket.successive_halving("obj", 1.0)
                stages.append(bracket._cumul_r)
            out.append(stages)
        return out

    assert milestones(tune.schedulers.HyperBandScheduler, 5, 3) == [[5], [1, 3]], f"{MOVED}: HyperBand's brackets"
    assert milestones(ray_private.HyperBand, 5, 3) == [[5], [1, 5]]
    assert milestones(ray_private.HyperBand, 10, 3) == [[10], [3, 10], [1, 3, 10]]
    assert milestones(ray_private.HyperBand, 5, 2.5) == milestones(tune.schedulers.HyperBandScheduler, 5, 2.5)
