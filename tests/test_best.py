"""Reading the best trials back from MLflow: `sweeps.best_config`, `best_run`, `top_configs`,
`clsweep best`, and retraining the exported config to the trial's accuracy matrix."""

from __future__ import annotations

import json

import pytest

import mlflow_sweeps as H
from mlflow_sweeps import ray_down_after_module, sqlite_sweep_folder  # noqa: F401 - fixtures
import sweeps
from clcore.config import ExperimentConfig
from sweeps import tracking as T
from sweeps import mlflow_store as M
from sweeps.best import SweepNotFoundError


@pytest.fixture(scope="session")
def sweep_state(sqlite_sweep_folder):
    from sweeps.runner import load_sweep

    return load_sweep(H.sweep_folder(sqlite_sweep_folder))


@pytest.fixture
def uri(sqlite_sweep_folder, monkeypatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(sqlite_sweep_folder)  # the default store: ./mlruns.db
    return f"sqlite:///{sqlite_sweep_folder.resolve() / 'mlruns.db'}"


def test_best_config_is_the_config_of_the_trial_with_the_best_objective(uri, sweep_state):
    best = sweep_state.best()  # from Ray storage: the complete trial with the highest val_average_accuracy
    assert sweeps.best_config("tiny_ewc") == sweep_state.trial_config(best)
    run = sweeps.best_run("tiny_ewc", tracking_uri=uri)
    assert run.trial_id == best.trial_id and (run.metric, run.mode) == ("val_average_accuracy", "max")
    assert run.metrics["val_average_accuracy"] == best.last["val_average_accuracy"]
    assert run.metrics["final_test_average_accuracy"] == best.last["test_average_accuracy"]


def test_top_configs_are_the_complete_trials_best_first(uri, sweep_state):
    complete = sorted((t for t in sweep_state.trials if t.outcome == "complete"),
                      key=lambda t: -t.last["val_average_accuracy"])
    top = sweeps.top_configs("tiny_ewc", k=len(complete) + 3)  # stopped and failed trials never compete
    assert [c.strategy.lambda_ for c in top] == [sweep_state.trial_config(t).strategy.lambda_ for t in complete]
    assert sweeps.top_configs("tiny_ewc", k=1) == [sweeps.best_config("tiny_ewc")]


def test_another_metric_is_ranked_in_its_own_direction(uri, sweep_state):
    complete = [t for t in sweep_state.trials if t.outcome == "complete"]
    least_forgetting = min(t.last["val_forgetting"] for t in complete)
    run = sweeps.best_run("tiny_ewc", metric="val_forgetting")
    assert run.mode == "min" and run.metrics["val_forgetting"] == least_forgetting


def test_an_unknown_sweep_names_the_sweeps_there(uri, tmp_path):
    with pytest.raises(SweepNotFoundError, match=r"no sweep named 'nope'.*tiny_ewc"):
        sweeps.best_config("nope")
    with pytest.raises(SweepNotFoundError, match="no MLflow store at"):  # and creates no empty store
        sweeps.best_config("tiny_ewc", tracking_uri=f"sqlite:///{tmp_path}/elsewhere.db")
    assert not (tmp_path / "elsewhere.db").exists()


def test_clsweep_best_exports_a_config_that_retrains_to_the_trials_accuracy_matrix(uri, sqlite_sweep_folder,
                                                                                   tmp_path, capsys):
    from mlflow import MlflowClient

    out = tmp_path / "best.yaml"
    assert H.clsweep("best", "tiny_ewc", "--out", out, folder=sqlite_sweep_folder) == 0
    run = sweeps.best_run("tiny_ewc")
    assert f"best trial {run.trial_id}" in capsys.readouterr().err
    assert ExperimentConfig.from_yaml(out) == run.config
    assert H.clsweep("best", "tiny_ewc", "--format", "json", folder=sqlite_sweep_folder) == 0
    assert ExperimentConfig.from_dict(json.loads(capsys.readouterr().out)) == run.config

    assert H.clsweep("train", out, "--json", folder=sqlite_sweep_folder) == 0  # same seed, same device (CPU)
    retrained = json.loads(capsys.readouterr().out)
    client = MlflowClient(uri)
    for split in ("val", "test"):
        logged = M.read_matrix_csv(client.download_artifacts(run.run_id, f"accuracy_matrix_{split}.csv", str(tmp_path)))
        assert retrained[f"{split}_matrix"] == logged
