"""MLflow tracking of real sweeps: the embedded SQLite store, a real `mlflow server`, a server that
dies mid-sweep, resume and sync without duplicates; and the tracking layer's own rules."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

import mlflow_sweeps as H
from mlflow_sweeps import ray_down_after_module, sqlite_sweep_folder  # noqa: F401 - fixtures
from conftest import small_config
from sweeps import plots
from sweeps import tracking as T
from sweeps import mlflow_store as M
from sweeps import trial_logging as W


def _tracked(sweep_dir: Path):
    """Run ids and metric histories, to compare before and after a resume or sync."""
    from mlflow import MlflowClient

    identity = json.loads((sweep_dir / T.STATE_FILE).read_text())
    client = MlflowClient(identity["tracking_uri"])
    store = T.Store(identity["tracking_uri"], sweep_dir.name)
    runs = store.trial_runs(identity["sweep_id"])
    parent = store.find_run({T.SWEEP_ID_TAG: identity["sweep_id"], T.KIND_TAG: "sweep"})
    histories = {tid: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_average_accuracy"))
                 for tid, r in runs.items()}
    parent_history = len(client.get_metric_history(parent.info.run_id, "val_average_accuracy"))
    return parent.info.run_id, {tid: r.info.run_id for tid, r in runs.items()}, histories, parent_history


# ------------------------------------------------------------------------------ (a) embedded SQLite store
def test_sweep_logs_to_the_embedded_sqlite_store(sqlite_sweep_folder):
    sweep_dir = H.sweep_folder(sqlite_sweep_folder)
    identity = json.loads((sweep_dir / T.STATE_FILE).read_text())
    assert identity["tracking_uri"] == f"sqlite:///{sqlite_sweep_folder.resolve() / 'mlruns.db'}"  # ./mlruns.db
    by_trial = H.check_sweep_in_mlflow(identity["tracking_uri"], sweep_dir)
    statuses = [run.data.tags[T.STATUS_TAG] for run in by_trial.values()]
    assert M.STOPPED_EARLY in statuses, f"ASHA stopped no trial: {statuses}"
    assert T.FINISHED in statuses
    assert any((sqlite_sweep_folder / "mlartifacts" / "tiny_ewc").rglob("accuracy_matrix_test.png"))  # local artifacts
    from sweeps.runner import load_sweep

    for trial in load_sweep(sweep_dir).trials:  # each run names the Ray node its trial ran on
        tags = by_trial[trial.trial_id].data.tags
        assert tags[M.NODE_ID_TAG] == tags[M.NODE_IDS_TAG] == trial.last["node_id"]
        assert tags[M.NODE_IP_TAG] == trial.last["node_ip"]


def test_resume_and_sync_log_into_the_same_runs_without_duplicates(sqlite_sweep_folder):
    sweep_dir = H.sweep_folder(sqlite_sweep_folder)
    before = _tracked(sweep_dir)
    assert H.clsweep("resume", sweep_dir, "--num-cpus", "2", folder=sqlite_sweep_folder) == 0
    assert H.clsweep("sync", sweep_dir, folder=sqlite_sweep_folder) == 0
    assert _tracked(sweep_dir) == before
    H.check_sweep_in_mlflow(json.loads((sweep_dir / T.STATE_FILE).read_text())["tracking_uri"], sweep_dir)


def test_sync_uploads_the_artifacts_a_trial_run_lacks(sqlite_sweep_folder):
    """A worker that lost the server right after creating its run left it without config.yaml (and a
    trial whose server died before it ended, without its matrices): sync uploads them, once."""
    sweep_dir = H.sweep_folder(sqlite_sweep_folder)
    before = _tracked(sweep_dir)
    trial_run_id = next(iter(before[1].values()))
    lost = [f for f in (sqlite_sweep_folder / "mlartifacts" / "tiny_ewc").glob(f"{trial_run_id}/artifacts/*")
            if f.name in ("config.yaml", "accuracy_matrix_val.csv")]
    assert len(lost) == 2
    contents = {f: f.read_bytes() for f in lost}
    for f in lost:
        f.unlink()
    assert H.clsweep("sync", sweep_dir, folder=sqlite_sweep_folder) == 0
    assert {f: f.read_bytes() for f in lost} == contents
    assert _tracked(sweep_dir) == before


# ------------------------------------------------------------------------------ (b) a real mlflow server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `mlflow server` process on 127.0.0.1 (SQLite backend, artifacts served by it)."""
    server = H.MlflowServer(tmp_path_factory.mktemp("mlflow-server"), H.free_port()).start()
    yield server
    server.stop()


def test_sweep_logs_to_a_real_mlflow_server_from_the_ray_workers(server, tmp_path):
    spec = H.write_sweep(tmp_path, tracking={"mlflow": False})  # --tracking-uri turns tracking on
    assert H.clsweep("run", spec, "--num-cpus", "2", "--tracking-uri", server.url, folder=tmp_path) == 0
    sweep_dir = H.sweep_folder(tmp_path)
    H.check_sweep_in_mlflow(server.url, sweep_dir)
    assert not (tmp_path / "mlruns.db").exists()
    trial_runs = T.Store(server.url, "tiny_ewc").trial_runs(json.loads((sweep_dir / T.STATE_FILE).read_text())["sweep_id"])
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in trial_runs.values())
    assert any(server.artifacts.rglob("accuracy_matrix_test.csv")), "artifacts go through the server"


def test_a_server_that_dies_mid_sweep_loses_nothing_after_sync(server, tmp_path, caplog):
    from mlflow import MlflowClient

    spec = H.write_sweep(tmp_path, name="tiny_ewc_dies", scheduler={"name": "fifo"},
                         algorithm={**H.SWEEP["algorithm"], "num_samples": 4})
    outcome = {}
    sweep = threading.Thread(target=lambda: outcome.setdefault("rc", H.clsweep(
        "run", spec, "--num-cpus", "2", "--tracking-uri", server.url, folder=tmp_path)))
    try:
        with caplog.at_level(logging.WARNING, logger="clsweep.tracking"):
            sweep.start()
            client = MlflowClient(server.url)
            deadline = time.monotonic() + 120
            while True:  # once a worker has logged a task straight to the server, stop the server
                experiment = client.get_experiment_by_name("tiny_ewc_dies")
                trials = client.search_runs([experiment.experiment_id], "tags.`clsweep.kind` = 'trial'") \
                    if experiment else []
                if any(client.get_metric_history(r.info.run_id, "tasks_seen") for r in trials):
                    break
                assert sweep.is_alive() and time.monotonic() < deadline, "no trial logged to the server"
                time.sleep(0.2)
            server.stop(signal.SIGKILL)
            sweep.join(timeout=300)
        assert outcome.get("rc") == 0, "the sweep must finish without its tracking server"
        sweep_dir = H.sweep_folder(tmp_path, "tiny_ewc_dies")
        assert f"clsweep sync {sweep_dir}" in caplog.text
        assert json.loads((sweep_dir / "summary.json").read_text())["counts"] == {"complete": 4}
    finally:
        sweep.join(timeout=300)
        server.start()  # the same store, back again

    assert H.clsweep("sync", sweep_dir, folder=tmp_path) == 0
    H.check_sweep_in_mlflow(server.url, sweep_dir)
    once = _tracked(sweep_dir)
    assert H.clsweep("sync", sweep_dir, folder=tmp_path) == 0
    assert _tracked(sweep_dir) == once


# ------------------------------------------------------------------------------ the tracking layer alone
def test_tracking_uri_defaults_to_an_absolute_sqlite_store_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert M.default_artifact_location(T.resolve_tracking_uri(), "my sweep") == \
        (tmp_path.resolve() / "mlartifacts" / "my_sweep").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert T.resolve_tracking_uri() == "http://mlflow:5000"
    assert T.resolve_tracking_uri("sqlite:///x/y.db") == f"sqlite:///{tmp_path.resolve()}/x/y.db"


def test_trial_metrics_are_the_trials_numbers_without_rays_bookkeeping():
    result = {"val_average_accuracy": 0.5, "tasks_seen": 2, "val_matrix": [[1.0]], "node_id": "abc",
              "data_shared": True, "training_iteration": 2, "time_total_s": 3.0, "timestamp": 1, "pid": 7}
    assert T.trial_metrics(result) == {"val_average_accuracy": 0.5, "tasks_seen": 2.0}


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(0.10, 0.80), (0.05, 0.70), (0.20, 0.90), (0.15, 0.75), (0.05, 0.60), (0.30, 0.85)]
    assert plots.pareto_front(points) == [1, 0, 2]


def test_the_lambda_plot_draws_each_outcome_with_its_own_marker(tmp_path, monkeypatch):
    """A rejected trial is an open diamond at its value, labelled as rejected, a finished one a filled
    circle, a failed one a cross on the lambda axis: the words are `Outcome.tag`'s."""
    import numpy as np
    from matplotlib.markers import MarkerStyle

    from sweeps.storage import Outcome

    figures, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), save(fig, path))[1])
    outcomes = {1.0: (Outcome.COMPLETE, 0.9), 1e3: (Outcome.REJECTED, 0.7), 1e6: (Outcome.FAILED, None)}
    trials = [plots.TrialPoint(f"t{i}", small_config({"strategy.name": "ewc", "strategy.lambda": lam}), outcome.tag,
                               {} if value is None else {"val_average_accuracy": value})
              for i, (lam, (outcome, value)) in enumerate(outcomes.items())]
    trials[2].last["val_average_accuracy"] = float("nan")  # a failed trial's last value, if any, is not drawn
    assert plots.accuracy_vs_lambda(trials, "val_average_accuracy", tmp_path / "lambda.png").exists()

    ax = figures[0].axes[0]
    drawn = {}
    for collection in ax.collections:
        (x, y), = collection.get_offsets().tolist()
        drawn[x] = (collection, y)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["ewc, " + plots.STATUS_STYLE[o.tag][2] for o, _ in outcomes.values()]
    assert "ewc, rejected (broke a requirement of the objective)" in labels
    for lam, (outcome, value) in outcomes.items():
        collection, y = drawn[lam]
        marker, filled, _ = plots.STATUS_STYLE[outcome.tag]
        style = MarkerStyle(marker)
        path = style.get_path().transformed(style.get_transform())  # as scatter draws it
        assert np.allclose(collection.get_paths()[0].vertices, path.vertices), outcome
        fill = collection.get_facecolors()
        if marker != "x":  # a cross is lines only
            assert (len(fill) > 0 and fill[0][3] > 0) == filled, outcome  # an open marker has no fill
        if value is not None:
            assert y == value
    assert plots.STATUS_STYLE["rejected"][:2] == ("D", False)


def _store_with_parent(tmp_path: Path):
    db = H.new_store(tmp_path.parent, tmp_path / "mlruns.db")
    store = T.Store(f"sqlite:///{db}", "unit")
    parent = store.client.create_run(store.experiment_id, tags={T.KIND_TAG: "sweep", T.SWEEP_ID_TAG: "s1"})
    return store, T.TrackingSettings(store.uri, "unit", store.experiment_id, "s1", parent.info.run_id, str(tmp_path),
                                     ("train.lr", "model.hidden_sizes"))


def test_trial_runs_are_named_by_their_searched_values():
    config = small_config({"strategy.name": "ewc", "strategy.lambda": 69800.0, "train.lr": 3.5e-4})
    assert T.trial_run_name(config, ["strategy.lambda", "train.lr"]) == "lambda=6.98e4 lr=3.5e-4"
    assert T.trial_run_name(config, ["train.lr", "benchmark.seed", "seed"]) == "lr=3.5e-4 benchmark.seed=0 seed=0"
    assert T.trial_run_name(config, []) == "trial"
    assert T.trial_run_name(config, ["train.lr"], M.STOPPED_EARLY, 2) == "stopped 2/5 · lr=3.5e-4"
    assert T.trial_run_name(config, ["train.lr"], M.FAILED, 0) == "failed 0/5 · lr=3.5e-4"
    assert T.trial_run_name(config, ["train.lr"], T.FINISHED, 5) == "lr=3.5e-4"


def test_experiments_open_on_their_runs_in_the_mlflow_ui(tmp_path):
    """MLflow 3 shows an experiment without ``mlflow.experimentKind`` as a GenAI overview; new and
    existing experiments get the tag."""
    db = H.new_store(tmp_path.parent, tmp_path / "mlruns.db")
    store = T.Store(f"sqlite:///{db}", "fresh")
    assert store.client.get_experiment(store.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old = store.client.create_experiment("made_before")
    T.Store(f"sqlite:///{db}", "made_before")
    assert store.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def _results(n: int, node: str = "n1") -> list[dict]:
    return [{"val_average_accuracy": 0.9 - 0.1 * k, "tasks_seen": k, "task_loss": 0.5, "training_iteration": k,
             "val_matrix": [[0.9] * 3] * k, "node_id": node, "node_ip": f"10.0.0.{node[1:]}"} for k in range(1, n + 1)]


def _node_tags(run) -> dict[str, str]:
    return {k: v for k, v in run.data.tags.items() if k.startswith("clsweep.node")}


def test_trial_logger_logs_each_task_once_even_when_a_restored_trial_reports_again(tmp_path):
    store, settings = _store_with_parent(tmp_path)
    config = small_config(benchmark={"n_tasks": 5})
    first = T.TrialLogger(settings, "t1", "trial_t1", config)
    for result in _results(2):
        first(result)
    assert _node_tags(store.trial_runs("s1")["t1"]) == {M.NODE_ID_TAG: "n1", M.NODE_IDS_TAG: "n1",
                                                         M.NODE_IP_TAG: "10.0.0.1"}
    restored = T.TrialLogger(settings, "t1", "trial_t1", config)  # a new process on another node: tasks 2-3
    for result in _results(3, node="n2")[1:]:
        restored(result)
    assert first.enabled and restored.enabled
    runs = store.trial_runs("s1")
    assert list(runs) == ["t1"]
    run = runs["t1"]
    assert run.data.tags[M.PARENT_RUN_TAG] == settings.parent_run_id and run.info.run_name == "lr=0.1 hidden_sizes=[32]"
    history = store.client.get_metric_history(run.info.run_id, "val_average_accuracy")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(1, 0.8), (2, 0.7), (3, 0.6)]
    assert "node_id" not in run.data.metrics and "training_iteration" not in run.data.metrics
    assert _node_tags(run) == {M.NODE_ID_TAG: "n2", M.NODE_IDS_TAG: "n1,n2", M.NODE_IP_TAG: "10.0.0.2"}
    assert run.data.params["strategy.name"] == "naive" and run.data.params["model.hidden_sizes"] == "[32]"
    assert [f.path for f in store.client.list_artifacts(run.info.run_id)] == ["config.yaml"]


def test_sync_tags_a_trial_run_with_every_node_it_ran_on_and_writes_them_once(tmp_path, monkeypatch):
    from sweeps.storage import TrialRecord

    store, settings = _store_with_parent(tmp_path)
    config = small_config(benchmark={"n_tasks": 5})
    history = _results(2, node="n1") + _results(3, node="n2")[2:]  # task 3 retried on n2 after n1 was lost
    live = T.TrialLogger(settings, "t1", "trial_t1", config)
    live(history[-1])  # live logging reached the store only from n2
    assert _node_tags(store.trial_runs("s1")["t1"])[M.NODE_IDS_TAG] == "n2"

    from sweeps.spec import SweepSpec
    from test_spec import small

    spec = small(search={"train.lr": {"dist": "loguniform", "low": 1e-3, "high": 0.3}})
    spec["base"]["strategy"] = {"name": "naive"}  # the trial's config: small_config's naive strategy
    tracker = T.SweepTracker(SweepSpec.from_dict(spec), tmp_path, T.SweepIdentity("s1", store.uri))
    tracker.store, tracker.parent = store, store.client.get_run(settings.parent_run_id)
    trial = TrialRecord("t1", "TERMINATED", {}, history, str(tmp_path), 3)
    tracker.upload_trial(trial, config)  # clsweep sync: Ray storage has every task
    expected = {M.NODE_ID_TAG: "n2", M.NODE_IDS_TAG: "n1,n2", M.NODE_IP_TAG: "10.0.0.2"}
    assert _node_tags(store.trial_runs("s1")["t1"]) == expected

    written = []
    log_batch = store.client.log_batch
    monkeypatch.setattr(store.client, "log_batch", lambda run_id, metrics=(), params=(), tags=(), **kw: (
        written.extend([*metrics, *params, *tags]), log_batch(run_id, metrics, params, tags, **kw)))
    tracker.upload_trial(trial, config, store.trial_runs("s1")["t1"])  # sync again: nothing is missing
    assert written == []
    assert _node_tags(store.trial_runs("s1")["t1"]) == expected


def test_a_dead_server_neither_fails_nor_stalls_a_trial(tmp_path, caplog):
    dead = f"http://127.0.0.1:{H.free_port()}"
    settings = T.TrackingSettings(dead, "unit", "1", "s1", "p1", str(tmp_path / "sweep"))
    logger = T.TrialLogger(settings, "t1", "trial_t1", small_config())
    W._warned_in_this_process.discard(dead)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="clsweep.tracking"):
        for result in _results(3):
            logger(result)
    assert time.monotonic() - started < 5
    assert not logger.enabled
    assert caplog.text.count("failed") == 1 and f"clsweep sync {tmp_path / 'sweep'}" in caplog.text


def test_an_unreachable_server_at_the_start_leaves_the_sweep_running_and_sync_says_why(tmp_path, caplog):
    from sweeps.spec import load_spec

    dead = f"http://127.0.0.1:{H.free_port()}"
    spec = load_spec(H.write_sweep(tmp_path))
    folder = tmp_path / "ray_results" / "tiny_ewc"
    folder.mkdir(parents=True)
    hook = T.MLflowTracking(dead)
    with caplog.at_level(logging.WARNING, logger="clsweep.tracking"):
        hook.sweep_started(spec, folder, resumed=False)
    assert hook.trial_logger() is None and not hook.tracker.online
    assert "unavailable" in caplog.text and f"clsweep sync {folder}" in caplog.text
    assert json.loads((folder / T.STATE_FILE).read_text())["tracking_uri"] == dead


def test_sync_of_a_folder_that_is_no_sweep_says_what_to_give(tmp_path, capsys):
    assert H.clsweep("sync", tmp_path, folder=tmp_path) == 2
    assert "no sweep.yaml here" in capsys.readouterr().err


def test_sync_closes_a_trial_run_whose_trial_storage_does_not_hold(sqlite_sweep_folder, tmp_path):
    """A driver killed after a trial's run was opened and before anything recorded the trial left a
    RUNNING run with no trial: the next upload closes it (KILLED, ``orphaned``, the reason), once."""
    from mlflow import MlflowClient

    copy = tmp_path / "copy"
    shutil.copytree(sqlite_sweep_folder, copy)
    sweep_dir, uri = H.sweep_folder(copy), f"sqlite:///{copy.resolve() / 'mlruns.db'}"
    identity = json.loads((sweep_dir / T.STATE_FILE).read_text())
    store = T.Store(uri, sweep_dir.name)
    parent = store.find_run({T.SWEEP_ID_TAG: identity["sweep_id"], T.KIND_TAG: "sweep"})
    orphan = W.open_trial_run(store, identity["sweep_id"], parent.info.run_id, "deadbeef",
                           small_config(strategy={"name": "ewc", "lambda": 1.0}), ("strategy.lambda",))
    before = {tid: (r.info.status, r.data.tags[T.STATUS_TAG]) for tid, r in store.trial_runs(identity["sweep_id"]).items()}
    assert before["deadbeef"] == ("RUNNING", M.RUNNING)

    T.sync(sweep_dir, uri)
    run = MlflowClient(uri).get_run(orphan.info.run_id)
    assert (run.info.status, run.data.tags[T.STATUS_TAG]) == ("KILLED", M.ORPHANED)
    assert "no trial deadbeef in the sweep's storage" in run.data.tags[M.FAILURE_TAG]
    after = {tid: (r.info.status, r.data.tags[T.STATUS_TAG]) for tid, r in store.trial_runs(identity["sweep_id"]).items()}
    assert {k: v for k, v in after.items() if k != "deadbeef"} == {k: v for k, v in before.items() if k != "deadbeef"}
    T.sync(sweep_dir, uri)  # a second upload leaves it as it is
    assert MlflowClient(uri).get_run(orphan.info.run_id).info.end_time == run.info.end_time
