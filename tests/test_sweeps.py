"""Real sweeps on a real local Ray runtime, on the synthetic benchmark with tiny MLPs.

One Ray instance (2 CPUs) serves the in-process sweeps; trials take half a CPU, so four run at
once. The stop tests run `clsweep` in child processes and stop the driver mid-sweep; resuming after
a kill, at four points of one sweep, is tests/test_kill_points.py's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import clcore
from clcore.config import ConfigError, ExperimentConfig
from sweeps.cli import main, sweep_exit_status
from sweeps.spec import OBJECTIVE_ATTR, SweepSpec, load_spec

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]

from sweeps import space  # noqa: E402  (imports Ray)
from sweeps.runner import load_sweep, run_sweep, trials_that_fit  # noqa: E402
from sweeps.storage import CHECKPOINT_DIRS, FINALIST_OF, TASKS_FILE, folder_bytes  # noqa: E402


def sweep(tmp_path: Path, name: str, **sections) -> dict:
    """A sweep mapping on the synthetic benchmark (5 tasks, MLP 32); ``sections`` replace sections."""
    data = {
        "name": name,
        "base": {"benchmark": {"name": "synthetic", "scenario": "task", "n_tasks": 5},
                 "model": {"name": "mlp", "hidden_sizes": [32]},
                 "strategy": {"name": "naive"},
                 "train": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 32, "device": "cpu"}},
        "search": {"train.lr": {"dist": "loguniform", "low": 1e-4, "high": 1.0},
                   "train.momentum": {"dist": "uniform", "low": 0.0, "high": 0.9}},
        "objective": {"metric": "val_average_accuracy"},
        "resources": {"cpu": 0.5},
        "storage": {"path": str(tmp_path / "results")},
        "max_failures": 1,
    }
    data.update(sections)
    return data


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def task_rows(trial_path: str) -> list[dict]:
    """Every line a trial wrote to its ``tasks.jsonl`` (`TrialRecord.history` drops repeats)."""
    return [json.loads(line) for line in Path(trial_path, TASKS_FILE).read_text().splitlines() if line.strip()]


def test_trials_at_a_time_are_what_the_cluster_fits():
    assert trials_that_fit({"CPU": 2.0}, cpu=1, gpu=0) == (2, "CPU")
    assert trials_that_fit({"CPU": 16.0, "GPU": 1.0}, cpu=1, gpu=0.25) == (4, "GPU")  # four share the GPU
    assert trials_that_fit({"CPU": 3.0, "GPU": 8.0}, cpu=1.5, gpu=1) == (2, "CPU")
    assert trials_that_fit({"CPU": 0.5}, cpu=1, gpu=0) == (1, "CPU")  # one trial waits rather than none runs
    assert trials_that_fit({"CPU": 0.3 * 10}, cpu=0.3, gpu=0) == (10, "CPU")  # no float floor off by one


# ------------------------------------------------------------------------------ schedulers
def test_optuna_asha_stops_trials_early_and_reports_the_best_complete_trial(tmp_path, local_ray, capsys):
    spec = SweepSpec.from_dict(sweep(
        tmp_path, "asha",
        # Two good learners first, then a slow one: with two trials at a time the slow learner reaches
        # ASHA's first rung after both good ones have, so it is cut whatever the machine's load.
        algorithm={"name": "optuna", "num_samples": 8, "max_concurrent": 2, "seed": 0,
                   "points_to_evaluate": [{"train.lr": 0.1, "train.momentum": 0.5},
                                          {"train.lr": 0.05, "train.momentum": 0.5},
                                          {"train.lr": 1e-4, "train.momentum": 0.0}]},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2}))
    state = run_sweep(spec, verbose=0)

    counts = state.counts()
    assert len(state.trials) == 8 and counts.get("failed", 0) == 0
    assert counts.get("stopped early", 0) >= 1, counts  # ASHA cut at least one trial after a task
    assert counts.get("complete", 0) >= 1, counts
    for trial in state.trials:
        assert [row["tasks_seen"] for row in trial.history] == list(range(1, trial.tasks_seen + 1))
        assert trial.last["data_shared"] is True  # the dataset came through the object store
        assert len(trial.last["val_matrix"]) == trial.tasks_seen
        assert trial.last["node_id"] and trial.last["clcore_seconds"] > 0
        assert trial.wall_seconds is not None and trial.wall_seconds >= trial.last["clcore_seconds"]

    best = state.best()
    assert best.outcome == "complete"
    assert best.last["val_average_accuracy"] == max(
        t.last["val_average_accuracy"] for t in state.trials if t.outcome == "complete")

    # storage alone tells the same story, and the best config reruns to the same accuracy matrix
    path = spec.experiment_path
    kept = {t.trial_id: list(Path(t.path).glob(CHECKPOINT_DIRS)) for t in state.trials}
    assert len(kept.pop(best.trial_id)) == 1 and not any(kept.values())  # ended trials' checkpoints pruned
    summary = json.loads((path / "summary.json").read_text())
    assert summary["best_trial"]["trial_id"] == best.trial_id
    assert load_sweep(path).best().trial_id == best.trial_id
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial: the same reduction order, the same predictions
    try:
        rerun = clcore.run(ExperimentConfig.from_yaml(path / "best_config.yaml"))
    finally:
        torch.set_num_threads(threads)
    assert rerun.val_matrix == best.last["val_matrix"]

    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"best trial {best.trial_id}" in out and "stopped early" in out and "validation accuracy matrix" in out
    assert f"storage: {path}, {folder_bytes(path) / 1e6:.1f} MB" in out


def test_pbt_changes_hyperparameters_of_running_trials(tmp_path, local_ray):
    spec = SweepSpec.from_dict(sweep(
        tmp_path, "pbt",
        base={"benchmark": {"name": "synthetic", "scenario": "task", "n_tasks": 5},
              "model": {"name": "mlp", "hidden_sizes": [32]},
              "strategy": {"name": "ewc", "mode": "online", "fisher_samples": 64},
              "train": {"optimizer": "sgd", "lr": 0.1, "epochs": 2, "batch_size": 32, "device": "cpu"}},
        search={"train.lr": {"dist": "loguniform", "low": 1e-3, "high": 0.1},
                "strategy.lambda": {"dist": "loguniform", "low": 1.0, "high": 100.0},
                "strategy.decay_factor": {"dist": "uniform", "low": 0.5, "high": 1.0}},
        algorithm={"name": "random", "num_samples": 4, "seed": 1},  # no cap with pbt: the population is all 4
        scheduler={"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                   "resample_probability": 0.5}))
    state = run_sweep(spec, verbose=0)

    assert state.counts() == {"complete": 4} and state.spec.algorithm.max_concurrent is None
    changed = []
    for trial in state.trials:
        configs = [row["config"] for row in trial.history]
        changed += [(trial.trial_id, before, after) for before, after in zip(configs, configs[1:]) if before != after]
        for config in configs:  # mutations stay inside the search space
            assert 1e-3 <= config["train.lr"] <= 0.1 and 0.5 <= config["strategy.decay_factor"] <= 1.0
    assert changed, "PBT never changed the config of a running trial"
    assert any(Path(spec.experiment_path).glob("pbt_policy_*.txt"))


# ------------------------------------------------------------------------------ failures
def test_a_diverging_or_invalid_trial_fails_alone_with_its_reason(tmp_path, local_ray):
    """Grid: lr 1e12 diverges (NaN loss); head ``multi`` with scenario ``domain`` is an invalid config
    (each value is valid with the other keys' first values, so only the combination fails)."""
    spec = SweepSpec.from_dict(sweep(
        tmp_path, "failures",
        search={"train.lr": {"dist": "grid", "values": [0.1, 1.0e12]},
                "benchmark.scenario": {"dist": "grid", "values": ["task", "domain"]},
                "model.head": {"dist": "grid", "values": ["auto", "multi"]}},
        algorithm={"name": "grid"}, scheduler="fifo"),  # max_concurrent unset: what the cluster fits
        overrides=["benchmark.n_tasks=2"])
    state = run_sweep(spec, verbose=0)
    assert state.spec.algorithm.max_concurrent == 4  # 2 CPUs at 0.5 per trial, stored as it ran

    assert len(state.trials) == 8
    for trial in state.trials:
        p = trial.params
        if p["benchmark.scenario"] == "domain" and p["model.head"] == "multi":
            expected = "ConfigError: model.head: 'multi' does not fit scenario 'domain'"
        elif p["train.lr"] > 1:
            expected = "TrainingDivergedError: non-finite loss"
        else:
            assert trial.outcome == "complete" and trial.error is None, trial
            continue
        assert trial.outcome == "failed" and expected in trial.error, (p, trial.error)
        assert "not retried: this failure is deterministic" in trial.error  # the one retry re-raised at once
        assert trial.cause == "training" and not trial.lost
    assert state.best() is not None and state.best().params["train.lr"] == 0.1
    assert state.lost() == [] and sweep_exit_status(state) == 0


def test_a_failure_is_put_down_to_the_trials_training_or_to_a_lost_process():
    """`failure_cause` on Ray's own exception objects, as Ray pickles them at a trial's failure."""
    from ray import exceptions as E

    from clcore.train import TrainingDivergedError
    from sweeps.runner import failure_cause
    from sweeps.trainable import TrialFailedError

    lost = [E.ActorDiedError(), E.ActorUnavailableError("socket closed", None), E.WorkerCrashedError(),
            E.NodeDiedError("node 1 died"), E.OutOfMemoryError("the memory monitor killed it")]
    for error in lost:  # raised by Ray itself, or as the cause of a task's error
        assert failure_cause(error) == "infrastructure", error
        assert failure_cause(E.RayTaskError("train", "traceback", error)) == "infrastructure", error
    own = [TrainingDivergedError(1, 0, 3, float("nan")), ConfigError("model.head", "does not fit"),
           TrialFailedError("diverged before (not retried)"), ZeroDivisionError("a bug")]
    for error in own:
        assert failure_cause(E.RayTaskError("train", "traceback", error)) == "training", error
    assert failure_cause(None) == "training"  # nothing Ray pickled: not counted as a lost machine


def _kill_worker_after_first_task(sweep_dir: Path, lr: float, killed: list) -> None:
    """SIGKILL the worker process of the trial with ``train.lr == lr`` once it has reported a task (its
    pid from the result.json the driver writes), as the machine under it would die."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        for result in sweep_dir.glob("trial_*/result.json"):
            rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            if rows and rows[0]["config"]["train.lr"] == lr:
                os.kill(int(rows[0]["pid"]), signal.SIGKILL)
                killed.append(rows[0]["trial_id"])
                return
        time.sleep(0.05)


@pytest.mark.parametrize("flag", ["--resume-errored", "--restart-errored"])
def test_a_trial_lost_to_infrastructure_is_told_apart_and_only_it_runs_again(tmp_path, local_ray, capsys, flag):
    """Grid over lr with no retries (``max_failures: 0``): lr 1e12 diverges (its own training), the lr 0.05
    trial's worker is SIGKILLed after its first task (infrastructure). The summary and exit status (3)
    say one trial was lost; ``resume`` with ``flag`` runs exactly that one again, as the same trial
    (``--resume-errored`` from its checkpoint, ``--restart-errored`` from scratch, reproducing its
    numbers), never the diverged one, and the sweep then exits 0."""
    import threading

    spec = SweepSpec.from_dict(sweep(
        tmp_path, "lost", search={"train.lr": {"dist": "grid", "values": [0.05, 0.1, 1.0e12]}},
        algorithm={"name": "grid"}, scheduler="fifo", max_failures=0),
        overrides=["train.epochs=8"])
    killed: list[str] = []
    watcher = threading.Thread(target=_kill_worker_after_first_task, args=(spec.experiment_path, 0.05, killed))
    watcher.start()
    state = run_sweep(spec, verbose=0)
    watcher.join()
    assert len(killed) == 1
    by_lr = {t.params["train.lr"]: t for t in state.trials}
    lost, diverged = by_lr[0.05], by_lr[1.0e12]
    assert lost.trial_id == killed[0] and lost.outcome == "failed" and lost.cause == "infrastructure", lost
    assert "ActorDiedError" in lost.error or "ActorUnavailableError" in lost.error, lost.error
    assert 1 <= lost.tasks_seen < 5
    assert diverged.outcome == "failed" and diverged.cause == "training"
    assert state.lost() == [lost] and sweep_exit_status(state) == 3
    from sweeps.cli import format_summary

    summary = format_summary(state)
    assert f"  {lost.trial_id} (infrastructure): " in summary and f"  {diverged.trial_id} (training): " in summary
    assert f"1 trials lost to infrastructure (a node or worker went away), not to their own training: " \
           f"clsweep resume {spec.experiment_path} --resume-errored" in summary
    def attempts_of(trial):  # what a rerun would add to: its task rows, the failures Ray logged for it
        folder = Path(trial.path)
        rows = task_rows(trial.path) if (folder / TASKS_FILE).exists() else []
        return rows, (folder / "error.txt").read_text().count("Failure #")

    diverged_before = attempts_of(diverged)

    capsys.readouterr()
    assert main(["resume", str(spec.experiment_path), flag]) == 0
    assert "lost to infrastructure" not in capsys.readouterr().out
    after = load_sweep(spec.experiment_path)
    assert after.lost() == [] and sweep_exit_status(after) == 0
    assert attempts_of(after.trial(diverged.trial_id)) == diverged_before, "the diverged trial ran again"
    assert [t.outcome for t in after.trials if t.params["train.lr"] == 1.0e12] == ["failed"]
    again = [t for t in after.trials if t.params["train.lr"] == 0.05 and t.outcome == "complete"]
    assert len(again) == 1
    tasks = [r["tasks_seen"] for r in task_rows(again[0].path)]
    assert again[0].trial_id == lost.trial_id  # the same trial, folder and MLflow run
    before = list(range(1, lost.tasks_seen + 1))
    assert tasks[:lost.tasks_seen] == before
    if flag == "--resume-errored":  # on from its last checkpoint (the task after it, or one more)
        assert tasks[lost.tasks_seen] in (lost.tasks_seen, lost.tasks_seen + 1) and tasks[-1] == 5, tasks
    else:  # from task 1 again, with the numbers it had
        assert tasks[lost.tasks_seen:] == [1, 2, 3, 4, 5], tasks
        rows = task_rows(again[0].path)
        assert [rows[k]["val_average_accuracy"] for k in range(lost.tasks_seen)] == \
            [rows[lost.tasks_seen + k]["val_average_accuracy"] for k in range(lost.tasks_seen)]
    assert {t.params["train.lr"] for t in after.trials if t.outcome == "complete"} == {0.05, 0.1}


def test_a_trial_that_stops_learning_is_rejected_by_the_objectives_requirement(tmp_path, local_ray, capsys):
    """lr 1e-5 learns nothing: its average accuracy is a number, but its accuracy on the task just learned
    stays near chance, so ``require`` rejects it: never the best, ranked below the kept by Ray too."""
    spec = SweepSpec.from_dict(sweep(
        tmp_path, "require", search={"train.lr": {"dist": "grid", "values": [1e-5, 0.1]}},
        objective={"metric": "val_average_accuracy", "require": {"val_min_accuracy_current_task": ">= 0.9"}},
        algorithm={"name": "grid"}, scheduler="fifo"), overrides=["benchmark.n_tasks=2"])
    state = run_sweep(spec, verbose=0)

    by_lr = {t.params["train.lr"]: t for t in state.trials}
    stuck, learner = by_lr[1e-5], by_lr[0.1]
    assert stuck.outcome == "rejected" and learner.outcome == "complete"
    assert stuck.broken.startswith("val_min_accuracy_current_task >= 0.9, broken after task 1: ")
    assert stuck.last[OBJECTIVE_ATTR] == stuck.last["val_average_accuracy"] - 2  # what ASHA and TPE saw
    assert learner.last[OBJECTIVE_ATTR] == learner.last["val_average_accuracy"]
    assert state.best().trial_id == learner.trial_id and load_sweep(spec.experiment_path).best() == state.best()
    capsys.readouterr()
    assert main(["status", str(spec.experiment_path)]) == 0
    out = capsys.readouterr().out
    assert f"{stuck.trial_id}: rejected: val_min_accuracy_current_task >= 0.9, broken after task 1" in out
    assert "required after every task: val_min_accuracy_current_task >= 0.9 (1 trials rejected)" in out
    assert "lowest right after learning" in out and "warning" not in out  # the best one learned every task


def test_a_reference_measures_intransigence_and_rejects_a_trial_far_below_it(tmp_path, local_ray, capsys):
    """A joint reference at two learning rates gives a*_k per task (the best over them); trials report
    intransigence against it, and CHF's rule (within 20% of the reference on every task just learned)
    rejects lr 1e-5. The sweep is started by `resume_sweep` from its sweep.yaml alone: a driver that
    died while the reference trained had not begun the search."""
    from clcore import metrics as M
    from sweeps.runner import resume_sweep
    from sweeps.storage import REFERENCE_DIR, REFERENCE_FILE, SPEC_FILE

    spec = SweepSpec.from_dict(sweep(
        tmp_path, "reference", search={"train.lr": {"dist": "grid", "values": [1e-5, 0.1]}},
        objective={"metric": "val_average_accuracy", "require": {"val_min_plasticity_ratio": ">= 0.8"}},
        reference={"strategy": "joint", "lr": [0.1, 0.01]}, algorithm={"name": "grid"}, scheduler="fifo"),
        overrides=["benchmark.n_tasks=2"])
    from sweeps.best import best_run
    from sweeps.tracking import MLflowTracking

    spec.experiment_path.mkdir(parents=True)
    spec.to_yaml(spec.experiment_path / SPEC_FILE)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    state = resume_sweep(spec.experiment_path, tracking=MLflowTracking(uri))

    runs = load_sweep(spec.experiment_path / REFERENCE_DIR)
    assert sorted(r.params["train.lr"] for r in runs.trials) == [0.01, 0.1]
    assert all(r.outcome == "complete" and r.last["config"]["train.lr"] == r.params["train.lr"] for r in runs.trials)
    for k in range(2):  # a*_k: the best reference run on task k, right after learning it
        top = max(runs.trials, key=lambda r: r.last["val_matrix"][k][k])
        assert state.reference["val"][k] == top.last["val_matrix"][k][k]
        assert state.reference["test"][k] == top.last["test_matrix"][k][k]
        assert state.reference["lr"][k] == top.params["train.lr"]
    assert json.loads((spec.experiment_path / REFERENCE_FILE).read_text()) == state.reference
    assert not list((spec.experiment_path / REFERENCE_DIR).glob(f"trial_*/{CHECKPOINT_DIRS}"))

    by_lr = {t.params["train.lr"]: t for t in state.trials}
    stuck, learner = by_lr[1e-5], by_lr[0.1]
    assert stuck.outcome == "rejected" and stuck.broken.startswith("val_min_plasticity_ratio >= 0.8, broken after task 1: ")
    assert learner.outcome == "complete" and state.best().trial_id == learner.trial_id
    for split in ("val", "test"):
        R, a_star = learner.last[f"{split}_matrix"], state.reference[split]
        assert learner.last[f"{split}_intransigence"] == pytest.approx(M.intransigence(R, a_star))
        assert learner.last[f"{split}_min_plasticity_ratio"] == pytest.approx(M.min_plasticity_ratio(R, a_star))
    assert stuck.last["val_min_plasticity_ratio"] < 0.8 <= learner.last["val_min_plasticity_ratio"]
    summary = json.loads((spec.experiment_path / "summary.json").read_text())
    assert summary["best_trial"]["bought"]["val_intransigence"] == learner.last["val_intransigence"]
    capsys.readouterr()
    assert main(["status", str(spec.experiment_path)]) == 0
    out = capsys.readouterr().out
    assert "reference joint at lr 0.01, 0.1 (a*_k: its best accuracy on task k right after learning it; from lr " in out
    assert f"val intransigence {learner.last['val_intransigence']:.4f} against the joint reference" in out
    best = best_run("reference", tracking_uri=uri)  # in MLflow: the trial's metrics, the parent's reference.json
    assert best.trial_id == learner.trial_id and best.metrics["test_intransigence"] == learner.last["test_intransigence"]
    import mlflow

    client = mlflow.MlflowClient(uri)
    parent = client.get_run(client.get_run(best.run_id).data.tags["mlflow.parentRunId"])
    assert "reference.json" in {f.path for f in client.list_artifacts(parent.info.run_id)}


def test_the_prefix_protocol_tunes_on_the_first_tasks_alone_and_evaluates_on_the_rest(tmp_path, local_ray, capsys):
    """A-GEM's protocol, small: trials see tasks 0 and 1 only (their matrices have no other column), the
    chosen lr then trains tasks 2..4 as a stream of their own on two fresh seeds, and best_config.yaml
    retrains the first of those runs exactly."""
    import mlflow

    from sweeps.storage import EVALUATION_OF
    from sweeps.tracking import MLflowTracking

    spec = SweepSpec.from_dict(sweep(
        tmp_path, "prefix", search={"train.lr": {"dist": "grid", "values": [0.003, 0.1]}},
        protocol={"name": "prefix", "tasks": 2, "evaluate_on": "rest", "seeds": 2},
        algorithm={"name": "grid"}, scheduler="fifo"))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    state = run_sweep(spec, verbose=0, tracking=MLflowTracking(uri))

    assert spec.n_tasks == 2 and state.counts() == {"complete": 2}
    for trial in state.trials:  # what the search saw: the prefix, and nothing else
        assert state.trial_config(trial).benchmark.task_range == [0, 2]
        assert [len(row) for row in trial.last["val_matrix"] + trial.last["test_matrix"]] == [2] * 4
    best = state.best()
    runs = state.evaluation.trials
    assert sorted(r.params["seed"] for r in runs) == spec.evaluation_seeds == [1, 2]
    for run in runs:
        assert run.params[EVALUATION_OF] == best.trial_id and run.last["config"]["train.lr"] == best.params["train.lr"]
        assert run.outcome == "complete" and [len(row) for row in run.last["test_matrix"]] == [3, 3, 3]
    chosen = ExperimentConfig.from_yaml(spec.experiment_path / "best_config.yaml")
    assert chosen.benchmark.task_range == [2, 5] and chosen.seed == 1 and chosen.train.lr == best.params["train.lr"]
    again = clcore.run(chosen)
    assert again.test_matrix == next(r for r in runs if r.params["seed"] == 1).last["test_matrix"]

    row = json.loads((spec.experiment_path / "summary.json").read_text())["evaluation"]
    values = sorted(r.last["test_average_accuracy"] for r in runs)
    assert sorted(row["metrics"]["test_average_accuracy"]["values"]) == values
    assert row["metrics"]["test_average_accuracy"]["mean"] == pytest.approx(sum(values) / 2)
    capsys.readouterr()
    assert main(["status", str(spec.experiment_path)]) == 0
    out = capsys.readouterr().out
    assert "prefix: tuned on tasks 0..1 of 5, evaluated on tasks 2..4 alone (a stream of their own); seeds [1, 2]:" in out
    assert f"test average accuracy {row['metrics']['test_average_accuracy']['mean']:.4f} ± " in out
    client = mlflow.MlflowClient(uri)
    parent, = client.search_runs([client.get_experiment_by_name("prefix").experiment_id],
                                 "tags.`clsweep.kind` = 'sweep'")
    assert parent.data.metrics["evaluation_test_average_accuracy"] == pytest.approx(
        row["metrics"]["test_average_accuracy"]["mean"])
    from sweeps.best import best_config  # from MLflow: the chosen values on the stream they are evaluated on

    from_mlflow = best_config("prefix", tracking_uri=uri)
    assert from_mlflow.benchmark.task_range == [2, 5] and from_mlflow.train.lr == best.params["train.lr"]


def test_the_two_phase_protocol_tunes_on_another_stream_and_hands_its_trials_that_data_alone(tmp_path, local_ray,
                                                                                               capsys):
    """Cha & Cho's two-phase protocol, small: the search trains on synthetic data of seed 1 (another
    dataset draw), its trials handed that data and no other; the chosen lr then trains the target
    (seed 0) on two fresh seeds, handed the target's data; best_config.yaml and MLflow's best config are
    the target's, and the first retrains exactly."""
    from sweeps.best import best_config
    from sweeps.storage import EVALUATION_OF
    from sweeps.tracking import MLflowTracking

    spec = SweepSpec.from_dict(sweep(
        tmp_path, "two_phase", search={"train.lr": {"dist": "grid", "values": [0.003, 0.1]}},
        protocol={"name": "two_phase", "tune_on": {"seed": 1}, "seeds": 2}, algorithm={"name": "grid"},
        scheduler="fifo"))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    state = run_sweep(spec, verbose=0, tracking=MLflowTracking(uri))

    assert state.counts() == {"complete": 2}
    for trial in state.trials:  # what the search saw: seed 1's data, handed over by the driver
        assert state.trial_config(trial).benchmark.seed == 1
        assert all(row["data_shared"] for row in task_rows(trial.path))
    best, runs = state.best(), state.evaluation.trials
    assert sorted(r.params["seed"] for r in runs) == spec.evaluation_seeds == [1, 2]
    for run in runs:  # the target, handed the target's data
        assert run.params[EVALUATION_OF] == best.trial_id and run.last["config"]["train.lr"] == best.params["train.lr"]
        assert state.evaluation.trial_config(run).benchmark.seed == 0
        assert all(row["data_shared"] for row in task_rows(run.path))
    chosen = ExperimentConfig.from_yaml(spec.experiment_path / "best_config.yaml")
    assert chosen.benchmark.seed == 0 and chosen.seed == 1 and chosen.train.lr == best.params["train.lr"]
    assert clcore.run(chosen).test_matrix == next(r for r in runs if r.params["seed"] == 1).last["test_matrix"]
    from_mlflow = best_config("two_phase", tracking_uri=uri)
    assert from_mlflow.benchmark.seed == 0 and from_mlflow.train.lr == best.params["train.lr"]
    capsys.readouterr()
    assert main(["status", str(spec.experiment_path)]) == 0
    assert "two_phase: tuned on all 5 tasks of the benchmark with seed 1, evaluated on the target; seeds [1, 2]:" \
        in capsys.readouterr().out


def test_the_per_task_protocol_keeps_one_model_per_round_and_its_schedule_retrains_exactly(tmp_path, local_ray,
                                                                                           capsys):
    """Lee et al.'s current-task protocol, small: 2 rounds, each of two learning rates from the model the
    round before kept, trained on its task alone and seeing no later task's data; the best on the task
    just learned is kept. The schedule then trains from scratch on two fresh seeds; best_config.yaml is
    that schedule and retrains the evaluation run exactly, and on the search's seed it retrains the kept
    chain. A driver that stopped after round 0 resumes at round 1 and ends with the same schedule."""
    import mlflow

    from sweeps.best import best_config
    from sweeps.runner import resume_sweep
    from sweeps.storage import EVALUATION_OF, ROUNDS_DIR, SCHEDULE_FILE
    from sweeps.tracking import MLflowTracking

    spec = SweepSpec.from_dict(sweep(
        tmp_path, "per_task", search={"train.lr": {"dist": "grid", "values": [0.003, 0.1]}},
        base={**sweep(tmp_path, "x")["base"], "benchmark": {"name": "synthetic", "scenario": "task", "n_tasks": 2},
              "strategy": {"name": "ewc", "lambda": 10.0}},
        objective={}, protocol={"name": "per_task", "seeds": 2}, algorithm={"name": "grid"}, scheduler="fifo"))
    assert spec.objective.metric == "val_accuracy_current_task"
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    state = run_sweep(spec, verbose=0, tracking=MLflowTracking(uri))

    assert [entry["task"] for entry in state.schedule] == [0, 1] and len(state.rounds) == 2
    kept = None
    for task, (runs, entry) in enumerate(zip(state.rounds, state.schedule)):
        assert runs.counts() == {"complete": 2}
        best = max(runs.trials, key=lambda t: t.last["val_accuracy_current_task"])
        assert entry["trial_id"] == best.trial_id and entry["values"] == {"train.lr": best.params["train.lr"]}
        for trial in runs.trials:
            rows = task_rows(trial.path)
            assert [row["tasks_seen"] for row in rows] == [task + 1]  # it trained task t alone ...
            assert runs.trial_config(trial).benchmark.visible_tasks == task + 1
            for matrix in (rows[0]["val_matrix"], rows[0]["test_matrix"]):  # ... and saw no later task
                assert all(math.isnan(a) for a in matrix[-1][task + 1:]) and not math.isnan(matrix[-1][task])
            if kept is not None:  # ... from the model the round before kept
                assert rows[0]["val_matrix"][:task] == kept.last["val_matrix"]
        kept = runs.trial(entry["trial_id"])

    runs = state.evaluation.trials
    assert sorted(r.params["seed"] for r in runs) == spec.evaluation_seeds == [1, 2]
    assert all(r.params[EVALUATION_OF] == "schedule" and r.outcome == "complete" for r in runs)
    chosen = ExperimentConfig.from_yaml(spec.experiment_path / "best_config.yaml")
    assert chosen.seed == 1 and chosen.schedule == [entry["values"] for entry in state.schedule]
    again = clcore.run(chosen)
    assert again.test_matrix == next(r for r in runs if r.params["seed"] == 1).last["test_matrix"]
    assert not any(math.isnan(a) for row in again.test_matrix for a in row)  # the evaluation sees every task
    on_search_seed = clcore.run(chosen.with_overrides({"seed": 0}))  # the kept chain, in one run
    assert [row[:i + 1] for i, row in enumerate(on_search_seed.val_matrix)] == \
        [row[:i + 1] for i, row in enumerate(kept.last["val_matrix"])]
    summary = json.loads((spec.experiment_path / "summary.json").read_text())
    assert summary["schedule"] == state.schedule
    assert summary["cost"]["task_trainings"] == 2 * 2 * 1 + 2 * 2  # a round's trial trains one task
    capsys.readouterr()
    assert main(["status", str(spec.experiment_path)]) == 0
    out = capsys.readouterr().out
    assert f"round 1 (2 complete): kept {state.schedule[1]['trial_id']}, val_accuracy_current_task " in out
    assert "per_task: 2 rounds, each from the model kept after the round before, selected on task t; the " \
           "schedule evaluated on every task; seeds [1, 2]:" in out

    # MLflow: a parent run tagged per_task, a finished nested run per round trial, the schedule back
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("per_task").experiment_id
    parent, = client.search_runs([experiment], "tags.`clsweep.kind` = 'sweep'")
    assert parent.data.tags["clsweep.protocol"] == "per_task" and parent.info.status == "FINISHED"
    assert parent.data.metrics["evaluation_test_average_accuracy"] == pytest.approx(
        summary["evaluation"]["metrics"]["test_average_accuracy"]["mean"])
    trial_runs = client.search_runs([experiment], "tags.`clsweep.kind` = 'trial'")
    assert sorted((r.data.tags["clsweep.round"], r.data.tags["clsweep.trial_id"]) for r in trial_runs) == sorted(
        (str(task), t.trial_id) for task, runs in enumerate(state.rounds) for t in runs.trials)
    assert {r.data.tags["clsweep.status"] for r in trial_runs} == {"finished"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trial_runs)
    assert best_config("per_task", tracking_uri=uri) == chosen
    capsys.readouterr()
    assert main(["best", "per_task", "--tracking-uri", uri]) == 0
    assert "best trial schedule" in capsys.readouterr().err

    # the driver stopped after round 0: the resume runs round 1 again from round 0's model
    path = spec.experiment_path
    (path / SCHEDULE_FILE).write_text(json.dumps(state.schedule[:1]))
    shutil.rmtree(path / ROUNDS_DIR / "task_1")
    shutil.rmtree(path / "evaluation")
    resumed = resume_sweep(path)
    assert [e["values"] for e in resumed.schedule] == [e["values"] for e in state.schedule]
    assert resumed.schedule[0] == state.schedule[0] and resumed.schedule[1]["trial_id"] != state.schedule[1]["trial_id"]
    assert [r.last["test_matrix"] for r in sorted(resumed.evaluation.trials, key=lambda r: r.params["seed"])] == \
        [r.last["test_matrix"] for r in sorted(runs, key=lambda r: r.params["seed"])]


def test_chf_searches_the_lr_by_fine_tuning_then_decays_lambda_until_within_the_drop(tmp_path, local_ray, capsys):
    """De Lange et al.'s CHF, small: task 0 is the strategy's own lr search; on task 1 fine-tuning from the
    kept model finds A* and lr*, then lambda decays from 1e4 by 0.1 at lr*, and the first attempt within
    0.5% of A* is kept (every stronger one failed). The schedule retrains the evaluation run exactly."""
    import mlflow

    from sweeps.storage import PLASTICITY_DIR
    from sweeps.tracking import MLflowTracking

    spec = SweepSpec.from_dict(sweep(
        tmp_path, "chf", search={}, objective={}, scheduler="fifo", resources={"cpu": 1.0},
        base={**sweep(tmp_path, "x")["base"], "benchmark": {"name": "synthetic", "scenario": "task", "n_tasks": 2},
              "strategy": {"name": "ewc"}},
        protocol={"name": "chf", "lr": [0.003, 0.1], "start": 1.0e4, "decay": 0.1, "attempts": 4, "drop": 0.005,
                  "seeds": 1}))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    state = run_sweep(spec, verbose=0, tracking=MLflowTracking(uri))

    first, second = state.schedule
    lrs = {t.params["train.lr"]: t for t in state.rounds[0].trials}
    assert sorted(lrs) == [0.003, 0.1] and first["trial_id"] == max(
        lrs.values(), key=lambda t: t.last["val_accuracy_current_task"]).trial_id
    assert first["values"] == {"train.lr": lrs[first["values"]["train.lr"]].params["train.lr"], "strategy.lambda": 1e4}
    assert state.plasticity[0] is None  # task 0: no penalty acts yet, no fine-tuning search
    plasticity = state.plasticity[1]  # task 1: fine-tuning from the kept model, on each lr
    assert (Path(state.rounds[1].path) / PLASTICITY_DIR) == Path(plasticity.path)
    assert {plasticity.trial_config(t).strategy.name for t in plasticity.trials} == {"naive"}
    best_ft = max(plasticity.trials, key=lambda t: t.last["val_accuracy_current_task"])
    assert second["a_star"] == best_ft.last["val_accuracy_current_task"]
    assert second["values"]["train.lr"] == best_ft.params["train.lr"]
    kept_first = state.rounds[0].trial(first["trial_id"])
    for trial in (*plasticity.trials, *state.rounds[1].trials):
        rows = task_rows(trial.path)
        if rows:  # each from the kept model, trained on task 1 alone
            assert [r["tasks_seen"] for r in rows] == [2] and rows[0]["val_matrix"][:1] == kept_first.last["val_matrix"]
    attempts = {t.params["strategy.lambda"]: t for t in state.rounds[1].trials if t.outcome == "complete"}
    strengths = [1e4, 1e3, 100.0, 10.0]
    assert spec.protocol.strengths() == strengths
    threshold = (1 - 0.005) * second["a_star"]
    assert second["attempt"] >= 1  # lambda 1e4 holds task 1 back by more than the drop: it decayed
    chosen = strengths[second["attempt"]]
    assert second["values"]["strategy.lambda"] == chosen and second["trial_id"] == attempts[chosen].trial_id
    assert all(attempts[s].last["val_accuracy_current_task"] < threshold for s in strengths[:second["attempt"]])
    assert second["passed"] == (attempts[chosen].last["val_accuracy_current_task"] >= threshold)
    assert second["passed"] or second["attempt"] == 3
    for runs, entry in zip(state.rounds, state.schedule):  # pruned, but each round's kept model stays
        assert len(list(Path(runs.trial(entry["trial_id"]).path).glob(CHECKPOINT_DIRS))) == 1

    run, = state.evaluation.trials
    chosen_config = ExperimentConfig.from_yaml(spec.experiment_path / "best_config.yaml")
    assert chosen_config.schedule == [first["values"], second["values"]]
    assert clcore.run(chosen_config).test_matrix == run.last["test_matrix"]
    capsys.readouterr()
    assert main(["status", str(spec.experiment_path)]) == 0
    assert f"(fine-tuning {second['a_star']:.4f}; attempt {second['attempt'] + 1})" in capsys.readouterr().out

    # MLflow: every trial of every phase is a nested run, tagged with its round and (task 1) its phase
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("chf").experiment_id
    parent, = client.search_runs([experiment], "tags.`clsweep.kind` = 'sweep'")
    assert parent.data.tags["clsweep.protocol"] == "chf" and parent.info.status == "FINISHED"
    runs = {r.data.tags["clsweep.trial_id"]: r for r in client.search_runs([experiment], "tags.`clsweep.kind` = 'trial'")}
    phases = {t.trial_id: ("0", None) for t in state.rounds[0].trials}
    phases |= {t.trial_id: ("1", "plasticity") for t in plasticity.trials}
    phases |= {t.trial_id: ("1", "stability") for t in state.rounds[1].trials if t.history}
    assert {i: (r.data.tags["clsweep.round"], r.data.tags.get("clsweep.round_phase")) for i, r in runs.items()} == phases
    assert {runs[t.trial_id].data.params["strategy.name"] for t in plasticity.trials} == {"naive"}
    assert sorted(runs[t.trial_id].info.run_name for t in plasticity.trials) == ["lr=0.003", "lr=0.1"]
    short = {1e4: "1e4", 1e3: "1e3", 100.0: "100", 10.0: "10"}[chosen]  # as the runs table shows lambda
    assert runs[second["trial_id"]].info.run_name == f"lr={second['values']['train.lr']:g} lambda={short}"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs.values())


def test_chfs_stopper_ends_the_decay_once_the_first_to_pass_is_known():
    from sweeps.runner import _FirstToPass

    stop = _FirstToPass([100.0, 10.0, 1.0, 0.1], "val_accuracy_current_task", 0.8)
    result = lambda value, acc: {"config": {"strategy.lambda": value}, "val_accuracy_current_task": acc}
    stop("b", result(10.0, 0.9))  # a weaker attempt passed, but the stronger one is not known yet
    assert not stop.stop_all()
    stop("a", result(100.0, 0.5))
    assert stop.stop_all()  # 100 failed, 10 passed: 10 it is, whatever 1 and 0.1 would give
    none = _FirstToPass([100.0, 10.0], "val_accuracy_current_task", 0.8)
    none("a", result(100.0, 0.5)), none("b", result(10.0, 0.5))
    assert not none.stop_all()  # none passed: every attempt runs


def test_compare_runs_each_protocol_and_tabulates_them_against_end_of_training(tmp_path, local_ray):
    """`clsweep compare` on one file: every protocol is a sweep, each choice trains on the same fresh
    seeds, and the table's compute is the tasks each sweep trained (search and evaluation)."""
    from sweeps.compare import COMPARE_FILES, plan, run_compare

    file = tmp_path / "small.yaml"
    file.write_text(yaml.safe_dump(sweep(tmp_path, "small", search={"train.lr": {"dist": "grid", "values": [0.003, 0.1]}},
                                         algorithm={"name": "grid"}, scheduler="fifo")))
    with pytest.raises(ConfigError, match="--protocols: unknown protocol 'prefix'"):
        run_compare(file, ["end_of_training", "prefix"], 2)
    with pytest.raises(ConfigError, match="two_phase:seed=0: .*protocol.tune_on: .* gives the target's own benchmark"):
        run_compare(file, ["end_of_training", "two_phase:seed=0"], 2)
    assert not (tmp_path / "results").exists()  # rejected before anything ran
    (token, two_phase), = plan(file, ["two_phase:name=split_mnist"], 2)
    assert two_phase.name == "small-two_phasenamesplit_mnist" and two_phase.protocol.tune_on == {"name": "split_mnist"}
    with pytest.raises(ConfigError, match="chf:10: .*base.strategy.name: naive has no strength"):
        plan(file, ["chf:10"], 2)
    (_, per_task), (_, chf) = plan(file, ["per_task:seen", "chf:10"], 2, ["strategy.name=ewc"])  # each round
    # ranked by its metric, no scheduler    assert per_task.protocol.select_on == "seen" and per_task.objective.metric == "val_average_accuracy"
    assert chf.protocol.lr == [0.003, 0.1] and chf.protocol.start == 10.0 and chf.search == {}  # the file's lr grid
    assert chf.objective.metric == "val_accuracy_current_task" and {per_task.scheduler.name, chf.scheduler.name} == {"fifo"}

    import mlflow

    from sweeps.tracking import MLflowTracking

    tokens = ["end_of_training", "prefix:2:rest"]
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    rows, folder = run_compare(file, tokens, 2, verbose=0, tracking_for=lambda spec: MLflowTracking(uri))
    assert [r["protocol"] for r in rows] == tokens and all(r["seeds"] == [1, 2] for r in rows)
    # tasks trained: 2 search trials x (5 | 2) tasks + 2 evaluation runs x (5 | 3) tasks
    assert [r["task_trainings"] for r in rows] == [20, 10]
    assert [r["compute_ratio"] for r in rows] == [1.0, 0.5]
    for row in rows:
        runs = load_sweep(row["path"]).evaluation.trials
        values = [r.last["test_average_accuracy"] for r in runs]
        assert row["test_average_accuracy"] == pytest.approx(sum(values) / 2)
    assert [r["evaluated_on"] for r in rows] == [[0, 5], [2, 5]]
    assert rows[0]["delta_average_accuracy"] == 0.0  # the rest's average is over other tasks: no difference
    assert rows[1]["delta_average_accuracy"] is None
    assert sorted(p.name for p in folder.iterdir()) == sorted(COMPARE_FILES)
    table = (folder / "compare.md").read_text().splitlines()
    assert table[0].startswith("| protocol | evaluated on tasks | test average accuracy |") and len(table) == 2 + len(tokens)
    assert table[3].startswith("| prefix:2:rest | 2..4 | ")
    client = mlflow.MlflowClient(uri)
    for row in rows:  # each protocol's parent run has the table beside its own results
        parent, = client.search_runs([client.get_experiment_by_name(row["sweep"]).experiment_id],
                                     "tags.`clsweep.kind` = 'sweep'")
        assert {f.path for f in client.list_artifacts(parent.info.run_id, "compare")} == {
            f"compare/{name}" for name in COMPARE_FILES}
    again, _ = run_compare(file, tokens, 2, verbose=0)  # finished sweeps are read back, not run again
    assert again == rows
    with pytest.raises(FileExistsError, match="sweep with other protocol"):  # not resumed as if unchanged
        run_compare(file, tokens, 3, verbose=0)


def test_optuna_searches_online_ewcs_decay_only_where_the_mode_is_online(tmp_path, local_ray):
    data = sweep(tmp_path, "conditional", algorithm={
        "name": "optuna", "num_samples": 4, "max_concurrent": 2, "seed": 0,
        "points_to_evaluate": [{"strategy.mode": "separate", "train.lr": 0.05},
                               {"strategy.mode": "online", "strategy.decay_factor": 0.7, "train.lr": 0.05}]},
        scheduler="fifo", search={"strategy.mode": {"dist": "choice", "values": ["separate", "online"]},
                                  "strategy.decay_factor": {"dist": "uniform", "low": 0.5, "high": 1.0},
                                  "train.lr": {"dist": "loguniform", "low": 1e-3, "high": 0.1}})
    data["base"]["strategy"] = {"name": "ewc", "lambda": 10.0}
    state = run_sweep(SweepSpec.from_dict(data, overrides=["benchmark.n_tasks=2"]), verbose=0)

    assert state.counts() == {"complete": 4}
    modes = set()
    for trial in state.trials:
        mode = trial.params["strategy.mode"]
        modes.add(mode)
        assert ("strategy.decay_factor" in trial.params) == (mode == "online"), trial.params  # asked only there
        config = state.trial_config(trial)
        assert config.strategy.mode == mode and (config.strategy.decay_factor is None) == (mode == "separate")
    assert modes == {"separate", "online"}
    assert {t.params.get("strategy.decay_factor") for t in state.trials} >= {None, 0.7}


def test_on_the_quickstart_a_trial_that_does_not_learn_its_tasks_is_rejected(tmp_path, local_ray, mnist_dir):
    """The shipped quickstart on real MNIST, constrained: lambda huge and lr tiny cannot learn a task
    once EWC's penalty holds the weights, lambda 1 with lr 1e-3 learns each."""
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml", [
        f"benchmark.data_dir={mnist_dir}", f"storage.path={tmp_path}", "tracking.mlflow=false", "scheduler=fifo",
        "algorithm.num_samples=2", "algorithm.max_concurrent=2",
        "objective.require={val_min_accuracy_current_task: '>= 0.9'}",
        "algorithm.points_to_evaluate=[{strategy.lambda: 1.0e+10, train.lr: 1.0e-4}, "
        "{strategy.lambda: 1.0, train.lr: 1.0e-3}]"])
    state = run_sweep(spec, verbose=0)
    by_lambda = {t.params["strategy.lambda"]: t for t in state.trials}
    stuck, learner = by_lambda[1e10], by_lambda[1.0]
    assert stuck.outcome == "rejected" and "val_min_accuracy_current_task >= 0.9, broken after task" in stuck.broken
    assert learner.outcome == "complete" and state.best().trial_id == learner.trial_id
    diagonal = [row[k] for k, row in enumerate(stuck.last["val_matrix"])]
    assert min(diagonal) < 0.9 <= min(row[k] for k, row in enumerate(learner.last["val_matrix"]))


def test_finalists_train_again_on_fresh_seeds_and_the_best_mean_wins(tmp_path, local_ray, capsys):
    spec = SweepSpec.from_dict(sweep(
        tmp_path, "finalists", search={"train.lr": {"dist": "grid", "values": [0.003, 0.03, 0.3]}},
        algorithm={"name": "grid"}, scheduler="fifo", selection={"finalists": 2, "seeds": 2}),
        overrides=["benchmark.n_tasks=2"])
    from sweeps.best import best_run
    from sweeps.tracking import MLflowTracking

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    state = run_sweep(spec, verbose=0, tracking=MLflowTracking(uri))

    top2 = [t.trial_id for t in state.ranked()[:2]]
    runs = state.finalists.trials
    assert sorted((r.params[FINALIST_OF], r.params["seed"]) for r in runs) == sorted(
        (t, s) for t in top2 for s in (1, 2))  # the search trained every trial with seed 0
    for run in runs:  # the search trial's values, the fresh seed
        assert run.outcome == "complete" and run.last["config"]["train.lr"] == state.trial(run.params[FINALIST_OF]).params["train.lr"]
    scores = state.finalist_scores()
    assert set(scores) == set(top2) and all(len(v) == 2 for v in scores.values())
    winner = max(scores, key=lambda t: sum(scores[t]))
    assert state.best().trial_id == winner
    summary = json.loads((spec.experiment_path / "summary.json").read_text())
    assert summary["best_trial"]["trial_id"] == winner and {r["trial_id"] for r in summary["finalists"]} == set(top2)
    assert ExperimentConfig.from_yaml(spec.experiment_path / "best_config.yaml") == state.trial_config(state.best())
    capsys.readouterr()
    assert main(["status", str(spec.experiment_path)]) == 0
    assert "chosen on the finalists' mean over seeds [1, 2]" in capsys.readouterr().out
    best = best_run("finalists", tracking_uri=uri)  # MLflow ranks by the finalists' mean too
    assert best.trial_id == winner and best.metric == "finalists_val_average_accuracy"
    assert best.metrics["finalists_val_average_accuracy"] == pytest.approx(sum(scores[winner]) / 2)


# ------------------------------------------------------------------------------ resume
def _first_report(experiment: Path) -> bool:
    return any(path.stat().st_size for path in experiment.glob(f"trial_*/{TASKS_FILE}"))


def _recorded_ray_processes(state_dir: Path, driver_pid: int) -> list[int]:
    record = state_dir / f"local-ray-{driver_pid}.json"
    return [pid for pid, _ in json.loads(record.read_text())["processes"]] if record.exists() else []


def _still_running(pids: list[int], wait: float = 30.0) -> list[int]:
    from sweeps.localray import _running

    deadline = time.time() + wait
    while time.time() < deadline and any(_running(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _running(p)]


def _check_asks_for_its_token(ray_pids: list[int], env: dict) -> None:
    """The local Ray a ``clsweep run`` started with ``RAY_AUTH_MODE`` unset asks for a token that only its
    own processes hold: its GCS server runs in token mode, and a client at this machine's network
    address (the GCS listens on every interface) is refused without the token or with another one."""
    def command(pid: int) -> list[str]:  # [] for a process that has ended since it was recorded
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except FileNotFoundError:
            return []

    gcs = next(pid for pid in ray_pids if any("gcs_server" in a for a in command(pid)[:1]))
    raylet = next(pid for pid in ray_pids if any("raylet" in a for a in command(pid)[:1]))
    address = next(a.split("=", 1)[1] for a in command(raylet) if a.startswith("--gcs-address="))
    assert address.split(":")[0] == ray.util.get_node_ip_address()  # the network address, not loopback
    environ = dict(v.split("=", 1) for v in Path(f"/proc/{gcs}/environ").read_bytes().decode().split("\0") if "=" in v)
    assert environ.get("RAY_AUTH_MODE") == "token" and len(environ.get("RAY_AUTH_TOKEN", "")) == 64
    # Ray's GCS client (private: ray._raylet.GcsClient) answers at once; ray.init would retry for minutes
    ask = (f"from ray._raylet import GcsClient; GcsClient(address={address!r}).get_all_node_info(timeout=20); "
           f"print('answered')")
    token = environ["RAY_AUTH_TOKEN"]
    for mode, answered in (({"RAY_AUTH_MODE": "disabled"}, False),
                           ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, False),
                           ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, True)):  # the last: it is reachable
        client = {**{k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}, **mode}
        done = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, env=client, timeout=120)
        assert ("answered" in done.stdout) == answered, (mode["RAY_AUTH_MODE"], done.stdout[-500:], done.stderr[-2000:])
        if not answered:
            assert "AuthenticationError" in done.stderr and "InvalidAuthToken" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_stopped_driver_leaves_no_ray_process_behind(tmp_path, stop):
    """The driver is stopped once a trial has reported its first task; every process of the local Ray
    it started ends with it (SIGINT, SIGTERM), or at the next clsweep start (SIGKILL: here a `run`;
    `resume` reaps the same way, through the same `ray_session`)."""
    data = sweep(tmp_path, "stop", algorithm={"name": "random", "num_samples": 2, "max_concurrent": 2, "seed": 0},
                 scheduler="fifo", resources={"cpu": 1})
    data["base"]["train"].update(epochs=20, batch_size=16)
    data["search"] = {"train.lr": {"dist": "loguniform", "low": 1e-2, "high": 0.3}}
    spec_file = tmp_path / "stop.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    experiment = tmp_path / "results" / "stop"
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(PYTHONUNBUFFERED="1", CLSWEEP_STATE_DIR=str(state_dir))
    clsweep = [sys.executable, "-m", "sweeps.cli"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([*clsweep, "run", str(spec_file), "--num-cpus", "2"], stdout=log,
                              stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not _first_report(experiment) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert _first_report(experiment) and driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        ray_pids = _recorded_ray_processes(state_dir, driver.pid)
        assert len(ray_pids) >= 2, "the local Ray's processes were not recorded"  # GCS and raylet at least
        if stop == "SIGINT":
            _check_asks_for_its_token(ray_pids, env)
        driver.send_signal(getattr(signal, stop))
        driver.wait(timeout=120)
        if stop == "SIGKILL":  # the next clsweep start (a one-trial sweep; resuming is another test's)
            done = subprocess.run([*clsweep, "run", str(spec_file), "--num-cpus", "2", "--set", "name=next",
                                   "--set", "algorithm.num_samples=1", "--set", "train.epochs=1",
                                   "--set", "benchmark.n_tasks=1"],
                                  capture_output=True, text=True, env=env, timeout=300)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            assert load_sweep(experiment.parent / "next").counts() == {"complete": 1}
        else:
            assert "interrupted" in (tmp_path / "driver.log").read_text() or driver.returncode in (0, 1)
        assert _still_running(ray_pids) == [], (tmp_path / "driver.log").read_text()[-3000:]
        assert not list(state_dir.glob("local-ray-*.json"))  # every record was settled
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------------------ search space
def test_search_space_conversion_and_pbt_clipping(tmp_path):
    data = sweep(tmp_path, "space", algorithm={"name": "random", "num_samples": 2}, scheduler={"name": "pbt"})
    data["base"]["strategy"] = {"name": "rwalk"}
    data["search"] = {"strategy.alpha": {"dist": "uniform", "low": 0.5, "high": 1.0},
                      "strategy.delta_t": {"dist": "randint", "low": 1, "high": 3},
                      "train.lr": {"dist": "quniform", "low": 0.01, "high": 0.1, "q": 0.01},
                      "model.hidden_sizes": {"dist": "choice", "values": [[32], [64, 64]]}}
    spec = SweepSpec.from_dict(data)
    domains = space.param_space(spec)
    samples = {domains["strategy.delta_t"].sample() for _ in range(200)}
    assert samples == {1, 2, 3}  # randint's high is inclusive in sweep files
    assert set(domains["model.hidden_sizes"].categories) == {"[32]", "[64, 64]"}
    assert spec.scheduler.mutate == ["strategy.alpha", "strategy.delta_t", "train.lr"]
    mutations = space.pbt_mutations(spec)
    assert set(mutations) == set(spec.scheduler.mutate)
    clipped = space.ClipToSpace(spec)({"strategy.alpha": 1.08, "strategy.delta_t": 0.4, "train.lr": 0.0432})
    assert clipped["strategy.alpha"] == 1.0 and clipped["strategy.delta_t"] == 1
    assert clipped["train.lr"] == pytest.approx(0.04)  # back on the grid of multiples of q


# ------------------------------------------------------------------------------ every strategy's ready sweep
REGULARISERS = [n for n in __import__("clcore.strategies", fromlist=["catalogue"]).catalogue.names()
                if n not in ("naive", "joint")]


@pytest.mark.parametrize("strategy", REGULARISERS)
def test_every_regulariser_has_a_ready_sweep_that_runs_on_the_synthetic_benchmark(strategy, tmp_path, local_ray):
    """``search_spaces/<strategy>_split_mnist_task.yaml`` tunes the strategy; shrunk to the synthetic benchmark,
    it runs to the end with every trial complete and the best trial's config naming the strategy."""
    path = Path(__file__).resolve().parents[1] / "search_spaces" / f"{strategy}_split_mnist_task.yaml"
    assert path.is_file(), f"{strategy} has no ready sweep file {path.name}"
    spec = SweepSpec.from_yaml(path, overrides=[
        "benchmark.name=synthetic", "benchmark.train_samples_per_task=128", "model.hidden_sizes=[16]",
        "train.epochs=1", "algorithm.num_samples=2", "algorithm.max_concurrent=2", "scheduler=fifo",
        f"storage.path={tmp_path}", "tracking.mlflow=false", "resources.cpu=0.5", "max_failures=0"])
    state = run_sweep(spec, verbose=0)
    assert state.counts() == {"complete": 2}, state.counts()
    best = state.trial_config(state.best())
    assert best.strategy.name == strategy
    assert set(spec.search) <= set(best.flat())
