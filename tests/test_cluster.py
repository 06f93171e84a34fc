"""Sweeps on a real multi-node Ray cluster on this machine, the by-hand way of docs/cluster.md.

Each test starts its own cluster with ``ray start`` (a head and a second node, one CPU each,
in their own process groups, with their own temp dir and ports, so they never touch another
Ray of this machine) and runs ``clsweep run SPEC --address 127.0.0.1:PORT`` in a child process,
tracked to a real ``mlflow server`` (on PostgreSQL through scripts/postgres.sh when it can run
here, else on SQLite). Then:

- trials ran on both nodes (each trial records its node id, and its MLflow run is tagged with it);
- the second node lost mid-sweep (its raylet SIGKILLed): the sweep still finishes, the lost
  trials are retried from their last task checkpoint, MLflow has one run per trial, each task once,
  and the retried trial's run names both nodes it ran on;
- the second node lost between two trials (right after its trial ended): no trial fails for it;

Ray's health checks keep their defaults (docs/cluster.md, "Lost nodes"), as a user's cluster has them.
- one trial's worker process SIGKILLed: only that trial is retried, the same checks;
- a sweep on a local Ray tracked to ``mlflow server`` on PostgreSQL: parent and nested runs;
- a sweep submitted with ``ray job submit --working-dir . -- clsweep run ...`` to a head with its
  dashboard (the job API, which needs ``ray[default]``), as docs/cluster.md submits one.

Token authentication: each cluster uses ``RAY_AUTH_MODE=token`` with a token of its own
(``RAY_AUTH_TOKEN``), given to every process of the test, so ``~/.ray/auth_token`` is neither
read nor written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from mlflow_sweeps import (SWEEP, MlflowServer, check_sweep_in_mlflow, free_port, new_store, using_tracking_uri,
                           wait_healthy)

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
CLSWEEP = str(BIN / "clsweep")
POSTGRES_SCRIPT = ROOT / "scripts" / "postgres.sh"
N_TASKS = 5


# ------------------------------------------------------------------------------ processes
def _ps() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            rows.append((int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return rows


def descendants(pid: int) -> dict[int, str]:
    """``{pid: command line}`` of every process below ``pid``."""
    rows = _ps()
    children: dict[int, list[int]] = {}
    for p, parent, _ in rows:
        children.setdefault(parent, []).append(p)
    args = {p: a for p, _, a in rows}
    out, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out[p] = args.get(p, "")
        todo.extend(children.get(p, []))
    return out


def _kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill the process group ``process`` leads (it was started with start_new_session=True)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


class RayNode:
    """``ray start --block`` in its own session: the node's processes are its descendants."""

    def __init__(self, name: str, args: list[str], env: dict, log: Path):
        self.name, self.log = name, log
        self.seen: dict[int, str] = {}
        self.process = subprocess.Popen([RAY, "start", "--block", *args], stdout=log.open("w"),
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def processes(self) -> dict[int, str]:
        found = descendants(self.process.pid)
        self.seen.update(found)  # remembered for teardown: workers may outlive their raylet
        return found

    def pid_of(self, word: str) -> int | None:
        for pid, args in self.processes().items():
            if word in args.split(None, 1)[0]:
                return pid
        return None

    def stop(self) -> None:
        self.processes()
        _kill_group(self.process)
        # In case Ray moved a process out of the group: kill those seen below this node that still
        # run (same pid, same command line: never a process that took a freed pid).
        alive = {pid: args for pid, _, args in _ps()}
        for pid, args in self.seen.items():
            if alive.get(pid) == args:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


class Cluster:
    """A Ray head and a second node on 127.0.0.1, one CPU each, with a temp dir and ports of their own
    (`start`); or a head alone with its dashboard (`start_head_with_dashboard`)."""

    def __init__(self, folder: Path):
        # Short: Ray's Unix socket paths live under it (at most 107 bytes).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="clr-", dir="/tmp"))
        self.folder = folder
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[RayNode] = []

    def _head_args(self) -> list[str]:
        # with ray[default] the head also starts the Ray Client server, by default on port 10001
        return ["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}"]

    def _node_args(self, num_cpus: int = 1) -> list[str]:
        return [f"--num-cpus={num_cpus}", "--num-gpus=0", "--object-store-memory=100000000",
                f"--temp-dir={self.temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}", "--disable-usage-stats"]

    def start(self) -> "Cluster":
        self.head = self._start("head", [*self._head_args(), "--include-dashboard=false", *self._node_args()])
        self.wait_nodes(1)
        self.worker = self._start("node2", [f"--address={self.address}",
                                            '--resources={"node2": 1}', *self._node_args()])
        self.wait_nodes(2)
        return self

    def start_head_with_dashboard(self, num_cpus: int = 2) -> "Cluster":
        """A head alone, with the dashboard and its job API on 127.0.0.1 (``self.dashboard``), as
        docs/cluster.md starts one by hand."""
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.head = self._start("head", [*self._head_args(), "--dashboard-host=127.0.0.1",
                                         f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                                         *self._node_args(num_cpus)])
        self.wait_nodes(1)
        wait_healthy_dashboard(self.dashboard, self.head)
        return self

    def _start(self, name: str, args: list[str]) -> RayNode:
        node = RayNode(name, args, self.env, self.folder / f"ray-{name}.log")
        self.nodes.append(node)
        return node

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        """Until ``n`` raylets run under the nodes started so far."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [node for node in self.nodes if node.pid_of("raylet")]
            if len(alive) >= n:
                time.sleep(2)  # the raylet registers with the GCS right after it starts
                return
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise AssertionError(f"ray start ({node.name}) exited:\n{node.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("Ray nodes did not start:\n" + "\n".join(
                    n.log.read_text()[-2000:] for n in self.nodes))
            time.sleep(0.5)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_healthy_dashboard(url: str, head: RayNode, timeout: float = 120) -> None:
    """Until the dashboard answers ``/api/gcs_healthz`` (what the compose head's health check asks)."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/api/gcs_healthz", timeout=2).status_code == 200:
                return
        if head.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the dashboard at {url} did not come up:\n{head.log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c.start()
    finally:
        c.stop()


# ------------------------------------------------------------------------------ MLflow
@contextlib.contextmanager
def postgres_uri():
    """A throwaway PostgreSQL through scripts/postgres.sh (as tests/test_docker.py runs it); its
    SQLAlchemy URI, or None when PostgreSQL cannot be installed or started here."""
    folder = Path(tempfile.mkdtemp(prefix="clsweep-pg-"))  # reachable by the OS user postgres
    try:
        started = subprocess.run(["bash", str(POSTGRES_SCRIPT), "start", str(folder), str(free_port())],
                                 capture_output=True, text=True, timeout=900)
        if started.returncode in (3, 4):
            yield None, (started.stderr.strip().splitlines() or ["no output"])[-1]
            return
        assert started.returncode == 0, f"scripts/postgres.sh start failed:\n{started.stderr}"
        yield started.stdout.strip(), None
    finally:
        subprocess.run(["bash", str(POSTGRES_SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


class PostgresMlflowServer(MlflowServer):
    """``mlflow server`` on PostgreSQL with proxied artifacts, as the compose stack runs it."""

    def __init__(self, folder: Path, port: int, backend_uri: str):
        super().__init__(folder, port)
        self.backend_uri = backend_uri

    def start(self) -> "PostgresMlflowServer":
        log = self.folder / "server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
             "--serve-artifacts", "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log.open("a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_healthy(self.url, self.process, log, timeout=300)
        return self


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """One MLflow server for the module: on PostgreSQL when it runs here, else on SQLite.
    Yields ``(server, reason PostgreSQL is missing or None)``."""
    folder = tmp_path_factory.mktemp("cluster-mlflow")
    with postgres_uri() as (uri, missing):
        server = (PostgresMlflowServer(folder, free_port(), uri) if uri else MlflowServer(folder, free_port()))
        try:
            yield server.start(), missing
        finally:
            server.stop()


# ------------------------------------------------------------------------------ sweeps
def write_spec(folder: Path, name: str, epochs: int, **changes) -> Path:
    """The tiny EWC sweep of tests/mlflow_sweeps.py, all trials to the end (FIFO), one CPU per
    trial (so two trials at once: one per node), retried once after a crash."""
    spec = {**SWEEP, "name": name,
            "base": {**SWEEP["base"], "train": {**SWEEP["base"]["train"], "epochs": epochs}},
            "algorithm": {"name": "random", "num_samples": 4, "max_concurrent": 2, "seed": 0},
            "scheduler": {"name": "fifo"}, "resources": {"cpu": 1},
            "storage": {"path": str(folder / "ray_results")}, "max_failures": 1, **changes}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start_sweep(spec: Path, env: dict, address: str | None, log: Path) -> subprocess.Popen:
    args = [CLSWEEP, "run", str(spec), *(["--address", address] if address else ["--num-cpus", "2"])]
    return subprocess.Popen(args, cwd=spec.parent, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def finish(driver: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    try:
        rc = driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(driver)
        raise AssertionError(f"the sweep did not finish in {timeout} s:\n{log.read_text()[-4000:]}") from None
    assert rc == 0, f"clsweep run exited with {rc}:\n{log.read_text()[-4000:]}"


def sweep_env(cluster: Cluster | None, server: MlflowServer) -> dict:
    env = dict(cluster.env) if cluster else {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    env["MLFLOW_TRACKING_URI"] = server.url
    return env


def task_rows(trial_path: str | Path) -> list[dict]:
    """Every line a trial wrote to its tasks.jsonl (repeats included)."""
    file = Path(trial_path) / "tasks.jsonl"
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def trial_pids(sweep_dir: Path) -> dict[str, int]:
    """``{trial id: pid of its worker}``, from the result.json the driver writes for each trial."""
    out = {}
    for result in sweep_dir.glob("trial_*/result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    out[row["trial_id"]] = int(row["pid"])
    return out


def wait_for(condition, driver: subprocess.Popen, log: Path, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if driver.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def running_trial_on(node: RayNode, sweep_dir: Path, min_tasks: int = 1):
    """A trial whose worker runs under ``node`` and has reported ``min_tasks`` or more but not all:
    ``(trial id, worker pid)``, or None."""
    on_node = node.processes()
    for trial_id, pid in trial_pids(sweep_dir).items():
        rows = task_rows(sweep_dir / f"trial_{trial_id}")
        if pid in on_node and on_node[pid].startswith("ray::") and min_tasks <= len(rows) < N_TASKS - 1:
            return trial_id, pid
    return None


def check_sweep(server: MlflowServer, sweep_dir: Path):
    """Every trial complete with each task once in its history, and MLflow agreeing (one run per
    trial, each step once, no gaps: `check_sweep_in_mlflow`)."""
    from sweeps.runner import load_sweep

    state = load_sweep(sweep_dir)
    assert len(state.trials) == 4
    assert state.counts() == {"complete": 4}, [(t.trial_id, t.outcome, t.error) for t in state.trials]
    for trial in state.trials:
        assert [r["tasks_seen"] for r in trial.history] == list(range(1, N_TASKS + 1))
    runs = check_sweep_in_mlflow(server.url, sweep_dir)
    return state, runs


def check_node_tags(run, trial) -> None:
    """The trial's MLflow run names the Ray node of its last task, and every node it ran on in order."""
    order = list(dict.fromkeys(r["node_id"] for r in trial.history))
    tags = run.data.tags
    assert tags.get("clsweep.node_id") == trial.last["node_id"], (trial.trial_id, tags)
    assert tags.get("clsweep.node_ip") == trial.last["node_ip"], (trial.trial_id, tags)
    assert tags.get("clsweep.node_ids") == ",".join(order), (trial.trial_id, tags)


def attempts(trial_path: str | Path) -> list[list[int]]:
    """The tasks a trial reported, split into attempts: the results Ray recorded for it
    (``result.json``), grouped by the worker process that reported them."""
    out: list[list[int]] = []
    last_pid = None
    for line in (Path(trial_path) / "result.json").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row["pid"] != last_pid:
                out.append([])
                last_pid = row["pid"]
            out[-1].append(int(row["tasks_seen"]))
    return out


def check_retried_from_checkpoint(trial) -> None:
    """The trial failed once and its retry went on from its last task checkpoint, not from task 1."""
    parts = attempts(trial.path)
    assert len(parts) == 2 and parts[0][0] == 1, parts
    # +1: the task after the last one the driver saw; +2: the worker died after saving a checkpoint
    # whose result the driver never got, which the retry finds in the trial's folder
    assert 1 < parts[1][0] <= parts[0][-1] + 2, f"the retry did not go on from its last checkpoint: {parts}"


def check_not_retried(trial) -> None:
    assert trial.num_failures == 0, trial.trial_id
    assert attempts(trial.path) == [list(range(1, N_TASKS + 1))]
    assert [r["tasks_seen"] for r in task_rows(trial.path)] == list(range(1, N_TASKS + 1))


# ------------------------------------------------------------------------------ tests
def test_sweep_runs_trials_on_both_nodes(cluster, tracking_server, tmp_path):
    server, _ = tracking_server
    spec = write_spec(tmp_path, "two_nodes", epochs=20)
    log = tmp_path / "sweep.log"
    finish(start_sweep(spec, sweep_env(cluster, server), cluster.address, log), log)

    sweep_dir = tmp_path / "ray_results" / "two_nodes"
    state, runs = check_sweep(server, sweep_dir)
    nodes = {t.trial_id: t.last["node_id"] for t in state.trials}
    assert all(nodes.values())
    assert len(set(nodes.values())) == 2, f"trials ran on {set(nodes.values())}, not on both nodes"
    for trial in state.trials:  # every task of a trial on one node, and MLflow's run says where it ran
        assert {r["node_id"] for r in trial.history} == {nodes[trial.trial_id]}
        check_node_tags(runs[trial.trial_id], trial)
    assert len({run.data.tags["clsweep.node_id"] for run in runs.values()}) == 2, "both nodes' ids in MLflow"
    assert all(t.num_failures == 0 for t in state.trials)
    parent_tag = {r.data.tags.get("mlflow.parentRunId") for r in runs.values()}
    assert len(parent_tag) == 1 and None not in parent_tag


def test_sweep_survives_the_loss_of_a_node(cluster, tracking_server, tmp_path):
    server, _ = tracking_server
    spec = write_spec(tmp_path, "node_lost", epochs=80)
    log = tmp_path / "sweep.log"
    sweep_dir = tmp_path / "ray_results" / "node_lost"
    driver = start_sweep(spec, sweep_env(cluster, server), cluster.address, log)
    try:
        victim, _ = wait_for(lambda: running_trial_on(cluster.worker, sweep_dir), driver, log,
                             "trial on node2 with a task done")
        raylet = cluster.worker.pid_of("raylet")
        assert raylet is not None
        os.kill(raylet, signal.SIGKILL)  # the machine is lost: its raylet, then whatever it left
        time.sleep(1)
        cluster.worker.stop()
        finish(driver, log)
    finally:
        _kill_group(driver)

    state, runs = check_sweep(server, sweep_dir)
    by_id = {t.trial_id: t for t in state.trials}
    lost = by_id[victim]
    assert lost.num_failures == 1, "the trial on the lost node was not retried"
    check_retried_from_checkpoint(lost)
    head = {t.last["node_id"] for t in state.trials}
    assert len(head) == 1, "after the loss every trial ends on the head"
    assert lost.history[0]["node_id"] not in head, "the victim began on the second node"
    for trial in state.trials:
        check_node_tags(runs[trial.trial_id], trial)
    assert runs[victim].data.tags["clsweep.node_ids"] == f"{lost.history[0]['node_id']},{lost.last['node_id']}"
    for trial in state.trials:
        if trial.trial_id != victim:
            check_not_retried(trial)


def ended_on(node_id_of, sweep_dir: Path, n_trials: int) -> str | None:
    """A trial the sweep's ledger has ended (stopped early or complete) whose last task ran on the node
    ``node_id_of`` names, while the search still has trials to start (of ``n_trials``): its id, or None."""
    ledger = sweep_dir / "trials.jsonl"
    rows = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()] if ledger.exists() else []
    started = {r["trial_id"] for r in rows if r["event"] == "start"}
    for row in rows:
        if row["event"] == "end" and row["status"] == "TERMINATED":
            history = task_rows(sweep_dir / f"trial_{row['trial_id']}")
            if history and history[-1]["node_id"] == node_id_of and len(started) < n_trials:
                return row["trial_id"]
    return None


def test_node_lost_between_trials_fails_no_trial(cluster, tracking_server, tmp_path):
    """The second node lost right after its trial ended (ASHA stopped it or it completed) and before
    the next trial starts there, with Ray's default health checks: no trial fails for it, each trial
    runs once, and MLflow has one run per trial."""
    server, _ = tracking_server
    n_trials = 6
    spec = write_spec(tmp_path, "lost_between", epochs=10,
                      search={"strategy.lambda": {"dist": "loguniform", "low": 0.01, "high": 10.0}},  # none diverges
                      algorithm={"name": "random", "num_samples": n_trials, "max_concurrent": 2, "seed": 0},
                      scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})
    log = tmp_path / "sweep.log"
    sweep_dir = tmp_path / "ray_results" / "lost_between"
    driver = start_sweep(spec, sweep_env(cluster, server), cluster.address, log)
    try:
        node2 = wait_for(lambda: next((rows[0]["node_id"] for t in sweep_dir.glob("trial_*")
                                       if (rows := task_rows(t)) and trial_pids(sweep_dir).get(t.name[6:])
                                       in cluster.worker.processes()), None),
                         driver, log, "a trial on node2")
        ended = wait_for(lambda: ended_on(node2, sweep_dir, n_trials), driver, log, "a trial on node2 ended")
        raylet = cluster.worker.pid_of("raylet")
        assert raylet is not None
        os.kill(raylet, signal.SIGKILL)
        time.sleep(1)
        cluster.worker.stop()
        finish(driver, log, timeout=300)
    finally:
        _kill_group(driver)

    from sweeps.runner import load_sweep

    state = load_sweep(sweep_dir)
    assert len(state.trials) == n_trials
    counts = state.counts()
    assert set(counts) <= {"complete", "stopped early"}, \
        (counts, ended, [(t.trial_id, t.outcome, t.error, t.num_failures) for t in state.trials])
    for trial in state.trials:  # each task once, from task 1 (a retry goes on from its checkpoint)
        assert [r["tasks_seen"] for r in trial.history] == list(range(1, trial.tasks_seen + 1))
    check_sweep_in_mlflow(server.url, sweep_dir)


def test_killed_trial_worker_retries_only_that_trial(cluster, tracking_server, tmp_path):
    server, _ = tracking_server
    spec = write_spec(tmp_path, "worker_killed", epochs=80)
    log = tmp_path / "sweep.log"
    sweep_dir = tmp_path / "ray_results" / "worker_killed"
    driver = start_sweep(spec, sweep_env(cluster, server), cluster.address, log)
    try:
        victim, pid = wait_for(lambda: running_trial_on(cluster.worker, sweep_dir), driver, log,
                               "trial on node2 with a task done")
        os.kill(pid, signal.SIGKILL)
        finish(driver, log)
    finally:
        _kill_group(driver)

    state, _ = check_sweep(server, sweep_dir)
    for trial in state.trials:
        if trial.trial_id == victim:
            assert trial.num_failures == 1
            check_retried_from_checkpoint(trial)
        else:
            check_not_retried(trial)
    assert len({r["node_id"] for t in state.trials for r in task_rows(t.path)}) == 2
    assert cluster.worker.pid_of("raylet") is not None, "killing a worker process must not take its node down"


def test_sweep_tracked_by_mlflow_server_on_postgres(tracking_server, tmp_path):
    server, missing = tracking_server
    if missing:
        pytest.skip(f"PostgreSQL cannot be installed or started here: {missing}")
    import mlflow

    spec = write_spec(tmp_path, "on_postgres", epochs=1)
    log = tmp_path / "sweep.log"
    finish(start_sweep(spec, sweep_env(None, server), None, log), log)

    sweep_dir = tmp_path / "ray_results" / "on_postgres"
    state, by_trial = check_sweep(server, sweep_dir)
    experiment = mlflow.MlflowClient(server.url).get_experiment_by_name("on_postgres")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    with using_tracking_uri(server.url):
        runs = mlflow.search_runs([experiment.experiment_id])
    parents = runs[runs["tags.clsweep.kind"] == "sweep"]
    assert len(parents) == 1 and len(runs) == 1 + len(state.trials)
    nested = runs[runs["tags.mlflow.parentRunId"] == parents.iloc[0]["run_id"]]
    assert sorted(nested["tags.clsweep.trial_id"]) == sorted(t.trial_id for t in state.trials)
    assert set(nested["status"]) == {"FINISHED"}
    assert list(server.artifacts.rglob("config.yaml")), "artifacts go to the server's --artifacts-destination"



# ------------------------------------------------------------------------------ Ray Jobs
def submit_job(address: str, env: dict, args: list[str], timeout: float = 300) -> str:
    """``ray job submit --address ADDRESS --working-dir . -- ARGS`` from the repository root, as
    docs/cluster.md submits a sweep; asserts that the job succeeded and returns its output."""
    submission = f"clsweep-test-{uuid.uuid4().hex[:8]}"
    command = [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--submission-id", submission,
               "--", *args]
    try:
        submitted = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        subprocess.run([RAY, "job", "stop", "--address", address, submission], env=env, capture_output=True,
                       timeout=60)
        out = (error.stdout or b"")[-4000:].decode(errors="replace")  # bytes, text=True or not
        raise AssertionError(f"the job did not finish in {timeout} s:\n{out}") from None
    output = submitted.stdout[-4000:] + submitted.stderr[-2000:]
    status = subprocess.run([RAY, "job", "status", "--address", address, submission], env=env,
                            capture_output=True, text=True, timeout=60)
    said = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)  # without its colours
    assert f"Job '{submission}' succeeded" in said, f"{said}\n{output}"
    assert submitted.returncode == 0, output
    return submitted.stdout


def check_job_sweep(sweep_dir: Path, n_trials: int) -> None:
    """The sweep a job ran: every trial complete in storage, each task once."""
    from sweeps.runner import load_sweep

    state = load_sweep(sweep_dir)
    assert state.counts() == {"complete": n_trials}, [(t.trial_id, t.outcome, t.error) for t in state.trials]
    for trial in state.trials:
        assert [r["tasks_seen"] for r in trial.history] == list(range(1, N_TASKS + 1))
    return state


def test_sweep_submitted_as_a_ray_job(tmp_path):
    """docs/cluster.md's way to submit a sweep, from the repository root, to a head started by hand
    with its job API: ``ray job submit --address http://127.0.0.1:PORT --working-dir . -- clsweep run
    SWEEP --set storage.path=...``. The job's driver and trials inherit ``MLFLOW_TRACKING_URI`` and
    ``PATH`` (an activated venv) from ``ray start``. Then the same with ``.git`` uploaded too, which
    the parent run's ``mlflow.source.git.commit`` needs."""
    import importlib.util

    import mlflow

    from sweeps import tracking as T
    from sweeps import mlflow_store as M

    if importlib.util.find_spec("aiohttp_cors") is None:  # what ray[default] adds for the dashboard
        pytest.fail("Ray's job API needs ray[default]: pip install -c constraints.txt -e '.[test]'")
    db = new_store(tmp_path.parent, tmp_path / "mlflow" / "mlruns.db")
    uri = f"sqlite:///{db}"
    spec = write_spec(tmp_path, "as_job", epochs=1)  # its storage.path: tmp_path/ray_results; --set must win
    cluster = Cluster(tmp_path)
    cluster.env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # clsweep on PATH, as in a venv
    submit_env = dict(cluster.env)  # the submitting shell: the cluster's token, no MLflow
    cluster.env["MLFLOW_TRACKING_URI"] = uri
    plain, with_git = tmp_path / "job_results", tmp_path / "job_results_git"
    try:
        cluster.start_head_with_dashboard(num_cpus=2)
        out = submit_job(cluster.dashboard, submit_env,
                         ["clsweep", "run", str(spec), "--set", f"storage.path={plain}"])
        assert "4 complete" in out
        git_env = {**submit_env, "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES": ".venv,venv,__pycache__"}
        submit_job(cluster.dashboard, git_env, ["clsweep", "run", str(spec), "--set", f"storage.path={with_git}",
                                                "--set", "algorithm.num_samples=2"])
    finally:
        cluster.stop()
    assert not (tmp_path / "ray_results").exists(), "a job used the sweep file's storage.path, not --set's"

    # the documented command: the sweep in storage and in MLflow, each trial run naming its node
    state = check_job_sweep(plain / "as_job", 4)
    sweep_id = json.loads((plain / "as_job" / T.STATE_FILE).read_text())["sweep_id"]
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("as_job")
    with using_tracking_uri(uri):
        runs = mlflow.search_runs([experiment.experiment_id], f"tags.`clsweep.sweep_id` = '{sweep_id}'",
                                  output_format="list")
    (parent,) = [r for r in runs if r.data.tags[T.KIND_TAG] == "sweep"]
    trial_runs = {r.data.tags[T.TRIAL_ID_TAG]: r for r in runs if r.data.tags[T.KIND_TAG] == "trial"}
    assert parent.info.status == "FINISHED" and parent.data.tags[T.BEST_TRIAL_TAG] == state.best().trial_id
    # Ray 2.60 leaves .git out of the upload, and the job runs the uploaded sweeps/ (this checkout's,
    # installed in the venv, would find its commit)
    assert "mlflow.source.git.commit" not in parent.data.tags
    assert sorted(trial_runs) == sorted(t.trial_id for t in state.trials)
    for trial in state.trials:
        run = trial_runs[trial.trial_id]
        assert run.data.tags[M.PARENT_RUN_TAG] == parent.info.run_id and run.info.status == "FINISHED"
        history = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "val_average_accuracy")
        assert sorted(m.step for m in history) == list(range(1, N_TASKS + 1))
        check_node_tags(run, trial)

    # with .git uploaded: everything tests/mlflow_sweeps.py checks, the commit included
    state = check_job_sweep(with_git / "as_job", 2)
    runs = check_sweep_in_mlflow(uri, with_git / "as_job")
    for trial in state.trials:
        check_node_tags(runs[trial.trial_id], trial)
    (parent,) = mlflow.MlflowClient(uri).search_runs(
        [experiment.experiment_id], f"tags.`{T.KIND_TAG}` = 'sweep' and tags.`{T.SWEEP_ID_TAG}` = "
                                    f"'{json.loads((with_git / 'as_job' / T.STATE_FILE).read_text())['sweep_id']}'")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert parent.data.tags["mlflow.source.git.commit"] == head
