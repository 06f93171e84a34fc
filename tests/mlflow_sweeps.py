"""Helpers for the MLflow tests (test_tracking, test_best, test_ui): a tiny real sweep, a real
``mlflow server`` process, and the checks of what a sweep leaves in MLflow.

The sweep: EWC on the synthetic benchmark (5 domain-incremental tasks, an MLP with 32 units),
6 random lambdas on a log scale, ASHA after every task (so some trials stop early), 2 at a time.
It runs in the test process through ``sweeps.cli.main``; a test module that imports
``ray_down_after_module`` stops that local Ray when it ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SWEEP = {
    "name": "tiny_ewc",
    "base": {
        "benchmark": {"name": "synthetic", "scenario": "domain", "n_tasks": 5},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "strategy": {"name": "ewc"},
        "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 1, "batch_size": 32, "device": "cpu"},
    },
    "search": {"strategy.lambda": {"dist": "loguniform", "low": 0.01, "high": 1.0e5}},
    "objective": {"metric": "val_average_accuracy", "mode": "max"},
    "algorithm": {"name": "random", "num_samples": 6, "max_concurrent": 2, "seed": 0},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1},
    "storage": {"path": "ray_results"},
    "max_failures": 0,
    "tracking": {"mlflow": True},
}


@pytest.fixture(scope="module", autouse=True)
def ray_down_after_module():
    """Sweeps here run in the test process; stop their local Ray after each module, so that other
    modules (which may start a Ray of their own) find none running."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def write_sweep(folder: Path, **changes) -> Path:
    spec = {**SWEEP, **changes}
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@contextlib.contextmanager
def cwd(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def clsweep(*args: str, folder: Path) -> int:
    """``clsweep ARGS`` in this process (Ray started by an earlier sweep is reused), run in ``folder``."""
    from sweeps.cli import main

    with cwd(folder):
        return main([str(a) for a in args])


@functools.cache
def template_store(folder: Path) -> Path:
    """An empty SQLite MLflow store with its tables made (MLflow's migrations take seconds: once)."""
    from mlflow import MlflowClient

    db = folder / "template.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def new_store(template_folder: Path, db: Path) -> Path:
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template_store(template_folder), db)
    return db


@functools.cache
def sqlite_sweep(folder: Path) -> Path:
    """Run the tiny sweep with the embedded default store (``./mlruns.db`` in ``folder``, where
    ``MLFLOW_TRACKING_URI`` is unset); returns the folder. Run once per session."""
    new_store(folder.parent, folder / "mlruns.db")
    previous = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert clsweep("run", write_sweep(folder), "--num-cpus", "2", folder=folder) == 0
    finally:
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return folder


@pytest.fixture(scope="session")
def sqlite_sweep_folder(tmp_path_factory) -> Path:
    """The tiny sweep with the embedded store, run once per session (whichever module asks first)."""
    folder = tmp_path_factory.getbasetemp() / "mlflow-sqlite-sweep"
    folder.mkdir(exist_ok=True)
    return sqlite_sweep(folder)


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free now, and never handed out before in this process: the kernel may give a just-closed
    port again, and two of a Ray node's components on one port make ``ray start`` exit."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} did not become healthy:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts), in its own process group."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port
        self.url = f"http://127.0.0.1:{port}"
        self.db = folder / "server.db"
        self.artifacts = folder / "server-artifacts"
        self.process = None

    def start(self) -> "MlflowServer":
        if not self.db.exists():
            new_store(self.folder.parent, self.db)
        log = self.folder / "server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=log.open("a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_healthy(self.url, self.process, log)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# ------------------------------------------------------------------------------ checks
def sweep_folder(folder: Path, name: str = "tiny_ewc") -> Path:
    return (folder / "ray_results" / name).resolve()


def check_sweep_in_mlflow(uri: str, sweep_dir: Path) -> dict:
    """Everything the sweep in ``sweep_dir`` (Ray storage) must have left in MLflow at ``uri``,
    read through ``mlflow.search_runs``. Returns ``{trial id: run row}``."""
    import mlflow
    from mlflow import MlflowClient

    from sweeps import tracking as T
    from sweeps import mlflow_store as M
    from sweeps.runner import load_sweep

    state = load_sweep(sweep_dir)
    spec = state.spec
    client = MlflowClient(uri)
    sweep_id = json.loads((sweep_dir / T.STATE_FILE).read_text())["sweep_id"]
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment is not None, f"no experiment {spec.name!r} in {uri}"
    with using_tracking_uri(uri):
        runs = mlflow.search_runs([experiment.experiment_id], f"tags.`clsweep.sweep_id` = '{sweep_id}'",
                                  output_format="list")

    # one parent run, finished, tagged as the issue asks, with the best trial's config and metrics
    parents = [r for r in runs if r.data.tags.get(T.KIND_TAG) == "sweep"]
    assert len(parents) == 1, f"{len(parents)} parent runs for one sweep"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    for key in ("clsweep.sweep_file", "clsweep.sweep_file_sha256", "clsweep.ray_address", "clsweep.scheduler",
                "clsweep.search_alg", "mlflow.source.git.commit"):
        assert tags.get(key), f"parent run lacks tag {key}"
    assert tags["clsweep.scheduler"].startswith(spec.scheduler.name)
    assert tags["clsweep.search_alg"].startswith(spec.algorithm.name)
    assert tags[T.METRIC_TAG] == "val_average_accuracy" and tags[T.MODE_TAG] == "max"
    best = state.best()
    assert best is not None
    assert tags[T.BEST_TRIAL_TAG] == best.trial_id
    assert float(tags["best.strategy.lambda"]) == state.trial_config(best).strategy.lambda_
    assert parent.data.metrics["val_average_accuracy"] == best.last["val_average_accuracy"]
    parent_files = _artifacts(client, parent.info.run_id)
    assert {"sweep.yaml", "best_config.yaml", "plots/accuracy_vs_lambda.png", "plots/accuracy_forgetting_pareto.png",
            "plots/learning_curves.png"} <= parent_files

    # one nested run per trial, under the parent
    with using_tracking_uri(uri):
        nested = mlflow.search_runs([experiment.experiment_id],
                                    f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list")
    by_trial = {r.data.tags[T.TRIAL_ID_TAG]: r for r in nested}
    assert len(nested) == len(by_trial) == len(state.trials), "one nested run per trial, no duplicates"
    assert set(by_trial) == {t.trial_id for t in state.trials}
    for trial in state.trials:
        run = by_trial[trial.trial_id]
        config = state.trial_config(trial)
        assert run.data.params == {k: T._param_value(v) for k, v in config.flat().items()}
        # per-task metrics: step = tasks seen, each step once, the values Ray stored
        for key in ("val_average_accuracy", "test_average_accuracy", "val_forgetting", "val_bwt", "task_loss",
                    "penalty_to_loss_ratio", "importance_norm", "tasks_seen"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, trial.tasks_seen + 1)), (trial.trial_id, key)
            assert {m.step: _stored(m.value) for m in history} == \
                {int(r["tasks_seen"]): _stored(float(r[key])) for r in trial.history}, (trial.trial_id, key)
        status = trial.outcome.tag
        assert run.data.tags[T.STATUS_TAG] == status
        assert run.info.status == M.MLFLOW_STATUS[status]
        if status == T.FINISHED:
            for name in ("average_accuracy", "forgetting", "bwt", "fwt"):
                assert run.data.metrics[f"final_val_{name}"] == trial.last[f"val_{name}"]
                assert run.data.metrics[f"final_test_{name}"] == trial.last[f"test_{name}"]
        else:
            assert not any(k.startswith("final_") for k in run.data.metrics)
        if status == M.FAILED:
            assert run.data.tags[T.FAILURE_TAG] == trial.error
        files = _artifacts(client, run.info.run_id)
        assert {"config.yaml", "accuracy_matrix_val.csv", "accuracy_matrix_test.csv", "accuracy_matrix_val.png",
                "accuracy_matrix_test.png"} <= files, (trial.trial_id, files)
    return by_trial


def _stored(value: float):
    """A metric value as MLflow keeps it: +-inf clamped to the largest float, NaN comparable."""
    if math.isnan(value):
        return "nan"
    return max(-sys.float_info.max, min(sys.float_info.max, value))


@contextlib.contextmanager
def using_tracking_uri(uri: str):
    """``mlflow.search_runs`` reads the global tracking URI: set it for a block, then restore it."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _artifacts(client, run_id: str, folder: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, folder):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out
