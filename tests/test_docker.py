"""The cluster setup of docs/cluster.md, checked without a Docker engine or a GPU.

- docker/compose.yaml passes `docker compose config`, with the services, loopback port
  bindings, health checks and GPU reservation the docs promise;
- the image's install commands and the services' commands are the ones the docs show, and the
  install commands resolve against the package index (pip's dry run);
- the KubeRay manifests run the same image with GPU limits and MLflow's address;
- scripts/postgres.sh starts a real PostgreSQL, and a real `mlflow server` on it stores
  a sweep's parent run, a nested trial run and an artifact.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"
REQUIREMENTS = DOCKER / "requirements.txt"
KUBERAY = DOCKER / "kuberay"
HEALTHCHECK = DOCKER / "healthcheck.py"
DOCS = ROOT / "docs" / "cluster.md"
POSTGRES_SCRIPT = ROOT / "scripts" / "postgres.sh"
CONSTRAINTS = ROOT / "constraints.txt"  # the versions the project is tested with

SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker"}
# pip options that change how a build caches, not what gets installed.
BUILD_ONLY_PIP_OPTIONS = {"--no-cache-dir"}


# --------------------------------------------------------------------------- helpers

def _compose_cli() -> list[str]:
    """`docker compose`, else a standalone Compose v2 `docker-compose`."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version", "--short"],
                                 capture_output=True, text=True)
        if version.returncode == 0 and not version.stdout.strip().startswith("1."):
            return [standalone]
    if docker is None and standalone is None:
        pytest.skip("no docker client on PATH, so `docker compose config` cannot run; install Docker's CLI "
                    "(https://docs.docker.com/engine/install/)")
    pytest.skip("the docker client has no Compose v2 plugin; install it with: scripts/compose-plugin.sh "
                "(make test does, where it can)")


def _compose_config(env_file: Path | str, **variables: str) -> dict:
    """`docker compose config` as JSON, from env_file and variables only."""
    names = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    env = {k: v for k, v in os.environ.items()
           if k not in names and not k.startswith("COMPOSE_")}
    env.update(variables)
    result = subprocess.run(
        [*_compose_cli(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file),
         "config", "--format", "json"],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _compose_config(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose_source() -> dict:
    """compose.yaml as written (commands keep their ${VARIABLE:-default} text)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _option(command: list[str], name: str) -> str:
    """The value of `--name value` or `--name=value` in a command."""
    for i, token in enumerate(command):
        if token == name:
            return command[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {shlex.join(command)}")


def _doc_commands() -> list[tuple[str | None, list[str]]]:
    """(label, tokens) of each command in the code blocks of docs/cluster.md.

    Backslash continuations are joined; a `# label` comment line names the commands
    after it, up to the next comment.
    """
    blocks = re.findall(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", DOCS.read_text(), re.M | re.S)
    commands = []
    for block in blocks:
        label, pending = None, ""
        for line in block.splitlines():
            line = line.strip()
            if pending:
                line, pending = pending + " " + line, ""
            if line.endswith("\\"):
                pending = line[:-1].strip()
                continue
            if line.startswith("#"):
                label = line.lstrip("# ").strip()
            elif line:
                commands.append((label, shlex.split(line, comments=True)))
    return commands


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _requirements(path: Path = REQUIREMENTS) -> dict[str, Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line]
    return {canonicalize_name(r.name): r for r in requirements}


def _pinned_version(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"{requirement} is not pinned with =="
    return specifier.version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthcheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args],
                          capture_output=True, text=True, timeout=30)


# ------------------------------------------------------------ (a) compose services

def test_compose_defines_the_cluster_services(compose):
    assert set(compose["services"]) == SERVICES


def test_env_example_holds_the_defaults(compose):
    """docker/.env.example documents the defaults, and only settings that exist."""
    assert _compose_config("/dev/null") == compose
    compose_variables = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    example = re.findall(r"^#? ?(\w+)=", ENV_EXAMPLE.read_text(), re.M)
    assert set(example) <= compose_variables | {"RAY_AUTH_TOKEN"}


def test_ports_are_published_on_localhost_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond localhost"
            published.setdefault(name, set()).add((port["target"], int(port["published"])))
    assert published == {"mlflow": {(5000, 5000)}, "ray-head": {(8265, 8265)}}


def test_bind_address_opens_the_ports_when_asked():
    opened = _compose_config(ENV_EXAMPLE, BIND_ADDRESS="0.0.0.0")
    host_ips = {port.get("host_ip") for service in opened["services"].values()
                for port in service.get("ports", [])}
    assert host_ips == {"0.0.0.0"}


def test_every_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        assert not check.get("disable") and check.get("test"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL")


def test_health_checks_probe_the_ports_the_services_listen_on(compose):
    services = compose["services"]
    def probed(name):
        return " ".join(services[name]["healthcheck"]["test"])
    assert f"127.0.0.1:{_option(services['mlflow']['command'], '--port')}/health" in probed("mlflow")
    head_dashboard = _option(services["ray-head"]["command"], "--dashboard-port")
    assert f"127.0.0.1:{head_dashboard}/api/gcs_healthz" in probed("ray-head")
    worker_agent = _option(services["ray-worker"]["command"], "--dashboard-agent-listen-port")
    assert f"127.0.0.1:{worker_agent}/api/local_raylet_healthz" in probed("ray-worker")
    for name in ("mlflow", "ray-head", "ray-worker"):
        assert str(HEALTHCHECK.relative_to(ROOT)) in probed(name)


def test_services_start_in_order_once_healthy(compose):
    expected = {"mlflow": "postgres", "ray-head": "mlflow", "ray-worker": "ray-head"}
    for name, dependency in expected.items():
        depends_on = compose["services"][name]["depends_on"]
        assert depends_on[dependency]["condition"] == "service_healthy"


def test_workers_reserve_gpus_and_scale(compose):
    worker = compose["services"]["ray-worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] == 1
    assert "container_name" not in worker and not worker.get("ports"), \
        "a fixed name or a published port would stop --scale ray-worker=N"
    two = _compose_config(ENV_EXAMPLE, RAY_WORKER_GPUS="2")["services"]["ray-worker"]
    assert two["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    head = compose["services"]["ray-head"]
    assert "deploy" not in head and _option(head["command"], "--num-gpus") == "0"


def test_one_image_for_mlflow_and_ray(compose):
    services = compose["services"]
    images = {services[name]["image"] for name in ("mlflow", "ray-head", "ray-worker")}
    assert images == {"clsweep:0.1.0"}
    for name in ("mlflow", "ray-head", "ray-worker"):
        build = services[name]["build"]
        assert Path(build["context"]) == ROOT and build["dockerfile"] == "docker/Dockerfile"
    postgres = services["postgres"]["image"]
    assert re.fullmatch(r"postgres:\d+\.\d+[\w.-]*", postgres), f"{postgres} is not pinned"


def test_ray_and_mlflow_are_wired_together(compose):
    services = compose["services"]
    mlflow_command = services["mlflow"]["command"]
    assert mlflow_command[:2] == ["mlflow", "server"] and "--serve-artifacts" in mlflow_command
    backend = _option(mlflow_command, "--backend-store-uri")
    assert backend.startswith("postgresql+psycopg://") and "@postgres:5432/" in backend
    artifacts = _option(mlflow_command, "--artifacts-destination")
    assert artifacts in {v["target"] for v in services["mlflow"]["volumes"]}

    tracking_uri = f"http://mlflow:{_option(mlflow_command, '--port')}"
    head_port = _option(services["ray-head"]["command"], "--port")
    assert _option(services["ray-worker"]["command"], "--address") == f"ray-head:{head_port}"
    for name in ("ray-head", "ray-worker"):
        service = services[name]
        assert service["environment"]["MLFLOW_TRACKING_URI"] == tracking_uri
        assert "--block" in service["command"], f"{name}: ray start must stay in the foreground"
        mounts = {v["source"]: v["target"] for v in service["volumes"]}
        assert mounts["ray-results"] == "/home/ray/ray_results", "Tune storage must be shared"
    # Drivers run on the head and read the data set there ($CLCORE_DATA_DIR in the image).
    head_mounts = {v["source"]: v["target"] for v in services["ray-head"]["volumes"]}
    assert head_mounts["datasets"] == "/home/ray/datasets"
    assert any(keyword == "ENV" and "CLCORE_DATA_DIR=/home/ray/datasets" in arguments
               for keyword, arguments in _dockerfile_instructions())


# ------------------------------------------- (b) the docs show the commands that run

def _dockerfile_pip_installs() -> list[list[str]]:
    """The Dockerfile's `pip install ...` commands, build-cache options left out, in order."""
    installs = []
    for keyword, arguments in _dockerfile_instructions():
        if keyword == "RUN":
            for part in arguments.split("&&"):
                tokens = [t for t in shlex.split(part) if t not in BUILD_ONLY_PIP_OPTIONS]
                if tokens[:2] == ["pip", "install"]:
                    installs.append(tokens)
    assert installs, "the Dockerfile installs nothing with pip"
    return installs


def test_dockerfile_install_commands_are_documented():
    documented = [tokens for _, tokens in _doc_commands()]
    for tokens in _dockerfile_pip_installs():
        assert tokens in documented, f"`{shlex.join(tokens)}` is not in docs/cluster.md"


def test_dockerfile_install_commands_resolve(tmp_path):
    """Each of the image's pip installs, run as ``pip install --dry-run`` against the package index
    (Python 3.11, as in the image): the pins resolve together, to exactly the pinned versions, and the
    project itself builds. What an image build would hit first, without a Docker engine."""
    resolved: dict[str, str] = {}
    for i, tokens in enumerate(_dockerfile_pip_installs()):
        report = tmp_path / f"report-{i}.json"
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                               "--report", str(report), *tokens[2:]], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"`{shlex.join(tokens)}` does not resolve:\n{done.stderr[-3000:]}"
        for item in json.loads(report.read_text())["install"]:
            resolved[canonicalize_name(item["metadata"]["name"])] = item["metadata"]["version"]
    for name, pin in _requirements().items():
        assert resolved.get(name) == _pinned_version(pin), f"{pin} resolved to {resolved.get(name)}"
    assert resolved["clsweep"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_compose_commands_are_documented(compose_source):
    documented = {label: tokens for label, tokens in _doc_commands() if label in SERVICES}
    commands = {name: shlex.split(service["command"])
                for name, service in compose_source["services"].items() if "command" in service}
    assert documented == commands


def test_dockerfile_builds_a_pinned_non_root_image():
    instructions = _dockerfile_instructions()
    base = next(a for k, a in instructions if k == "ARG" and a.startswith("BASE_IMAGE="))
    image = base.split("=", 1)[1]
    assert image == f"rayproject/ray:{_pinned_version(_requirements()['ray'])}-py311-gpu"
    assert ("FROM", "${BASE_IMAGE}") in instructions
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"


def test_requirements_pin_every_project_dependency():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = _requirements()
    for line in pyproject["project"]["dependencies"]:
        needed = Requirement(line)
        name = canonicalize_name(needed.name)
        assert name in pinned, f"{needed.name} (pyproject.toml) is not pinned in {REQUIREMENTS}"
        assert needed.extras <= pinned[name].extras, f"{pinned[name]} lacks extras {needed.extras}"
        assert needed.specifier.contains(_pinned_version(pinned[name]), prereleases=True)
    for name, tested in _requirements(CONSTRAINTS).items():
        assert _pinned_version(pinned[name]) == _pinned_version(tested), \
            f"{REQUIREMENTS} pins {pinned[name]}, {CONSTRAINTS.name} {tested}"
    assert {"default", "tune"} <= pinned["ray"].extras, "the head needs ray[default] for jobs"
    (ray,) = [Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == "ray"]
    assert "default" in ray.extras, "pyproject.toml: `ray job submit` (docs/cluster.md) needs ray[default]"
    assert "psycopg" in pinned, "MLflow's postgresql+psycopg:// store needs psycopg"


def test_documented_search_spaces_exist():
    text = DOCS.read_text() + "".join(p.read_text() for p in KUBERAY.glob("*.yaml"))
    mentioned = set(re.findall(r"search_spaces/[\w.-]+\.yaml", text))
    assert mentioned
    missing = sorted(path for path in mentioned if not (ROOT / path).is_file())
    assert not missing, f"docs/cluster.md or docker/kuberay name missing files: {missing}"


# ------------------------------------------------------------------- (c) KubeRay

def _kuberay(kind: str) -> dict:
    documents = [d for p in sorted(KUBERAY.glob("*.yaml"))
                 for d in yaml.safe_load_all(p.read_text()) if d]
    (document,) = [d for d in documents if d["kind"] == kind]
    return document


def test_kuberay_cluster_runs_the_compose_image_with_gpus(compose):
    cluster = _kuberay("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == _pinned_version(_requirements()["ray"])
    image = compose["services"]["ray-worker"]["image"]
    head = cluster["spec"]["headGroupSpec"]
    head_containers = head["template"]["spec"]["containers"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    groups = cluster["spec"]["workerGroupSpecs"]
    assert groups
    containers = list(head_containers)
    for group in groups:
        (worker,) = group["template"]["spec"]["containers"]
        assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        containers.append(worker)
    claim = _kuberay("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for container in containers:
        assert container["image"] == image
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"].startswith("http://")
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/home/ray/ray_results" in mounts and "/dev/shm" in mounts


def test_kuberay_job_targets_the_cluster():
    job = _kuberay("RayJob")
    cluster = _kuberay("RayCluster")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    assert entrypoint[:2] == ["clsweep", "run"]
    assert entrypoint[2].startswith("/home/ray/clsweep/search_spaces/")
    assert _option(entrypoint, "--set") == "storage.path=/home/ray/ray_results"


def test_kuberay_cluster_asks_for_a_token_and_admits_only_its_pods_and_the_operator():
    cluster = _kuberay("RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    policy = _kuberay("NetworkPolicy")
    own = {"ray.io/cluster": cluster["metadata"]["name"]}  # the label KubeRay puts on the cluster's pods
    assert policy["spec"]["podSelector"] == {"matchLabels": own}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    assert all(rule.get("from") for rule in rules), "a rule without `from` admits every source"
    for rule in rules:
        for source in rule["from"]:
            assert "ipBlock" not in source
            if source.get("podSelector") == {"matchLabels": own} and "namespaceSelector" not in source:
                continue  # the cluster's own pods, any port
            assert source["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}, source
            head_ports = {p["containerPort"]: p["name"] for p in
                          cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
            assert [(p["port"], p["protocol"]) for p in rule["ports"]] == [(8265, "TCP")]
            assert head_ports[8265] == "dashboard"  # the job API the operator posts RayJobs to


def test_documented_token_command_writes_the_token_once(tmp_path):
    """docs/cluster.md's first by-hand Ray step writes ``~/.ray/auth_token`` when there is none and
    keeps it after that (the cluster tests pass their tokens through ``RAY_AUTH_TOKEN`` instead)."""
    command = "ray get-auth-token --generate"
    assert f"{command} > /dev/null" in DOCS.read_text()
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_AUTH_TOKEN", None)
    ray = str(Path(sys.executable).with_name("ray"))
    printed = [subprocess.run([ray, *command.split()[1:]], env=env, capture_output=True, text=True, timeout=120)
               for _ in range(2)]
    assert all(p.returncode == 0 for p in printed), printed[0].stderr
    token = (tmp_path / ".ray" / "auth_token").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert [p.stdout.strip() for p in printed] == [token, token]


# --------------------------------------------- (d) MLflow on a real PostgreSQL server

def test_healthcheck_fails_when_nothing_answers():
    result = _healthcheck(f"http://127.0.0.1:{_free_port()}/health")
    assert result.returncode == 1 and "refused" in result.stderr.lower()


@contextlib.contextmanager
def _postgres():
    """A throwaway PostgreSQL through scripts/postgres.sh; yields its SQLAlchemy URI."""
    # Under the system temp dir, not pytest's 0700 one: as root the server runs as the
    # OS user `postgres`, which must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="clsweep-pg-"))
    try:
        started = subprocess.run(["bash", str(POSTGRES_SCRIPT), "start", str(folder),
                                  str(_free_port())], capture_output=True, text=True,
                                 timeout=900)
        if started.returncode in (3, 4):  # cannot install / the server did not start
            reason = (started.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"PostgreSQL cannot be installed or started here: {reason}")
        assert started.returncode == 0, f"scripts/postgres.sh start failed:\n{started.stderr}"
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(POSTGRES_SCRIPT), "stop", str(folder)],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _mlflow_server(backend_uri: str, artifacts: Path, log: Path):
    """`mlflow server` on backend_uri, artifacts proxied to a folder; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", backend_uri,
               "--serve-artifacts", "--artifacts-destination", str(artifacts),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as output:
        # Its own session, so that the server and its workers stop together below.
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # minutes on a loaded CI machine
        while _healthcheck(f"{url}/health", "OK").returncode != 0:
            assert server.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server not healthy:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_mlflow_server_on_postgres_records_nested_runs(tmp_path, monkeypatch):
    if importlib.util.find_spec("psycopg") is None:
        pytest.fail("MLflow's PostgreSQL store needs the psycopg driver: "
                    "pip install 'psycopg[binary]==3.3.9' (pinned in docker/requirements.txt)")
    import mlflow

    artifacts = tmp_path / "mlartifacts"
    with _postgres() as backend_uri, \
            _mlflow_server(backend_uri, artifacts, tmp_path / "mlflow.log") as url:
        assert _healthcheck(f"{url}/health", "no such text").returncode == 1

        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(url)
        try:
            experiment_id = mlflow.create_experiment("clsweep-docker-test")
            experiment = mlflow.get_experiment(experiment_id)
            assert experiment.artifact_location.startswith("mlflow-artifacts:")
            with mlflow.start_run(experiment_id=experiment_id, run_name="sweep") as parent:
                mlflow.log_param("search_space", "quickstart")
                with mlflow.start_run(experiment_id=experiment_id, run_name="trial-0",
                                      nested=True) as child:
                    mlflow.log_params({"lr": 0.01, "ewc_lambda": 100})
                    for task, accuracy in enumerate([0.9, 0.85]):
                        mlflow.log_metric("average_accuracy", accuracy, step=task)
                    mlflow.log_text("accuracy matrix", "trial/notes.txt")

            runs = mlflow.search_runs(experiment_ids=[experiment_id])
            assert sorted(runs["tags.mlflow.runName"]) == ["sweep", "trial-0"]
            assert set(runs["status"]) == {"FINISHED"}
            nested = mlflow.search_runs(
                experiment_ids=[experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
            assert list(nested["run_id"]) == [child.info.run_id]
            trial = nested.iloc[0]
            assert trial["params.lr"] == "0.01" and trial["params.ewc_lambda"] == "100"
            assert trial["metrics.average_accuracy"] == pytest.approx(0.85)
            history = mlflow.MlflowClient().get_metric_history(child.info.run_id,
                                                               "average_accuracy")
            assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.9, 0.85]

            text = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/trial/notes.txt")
            assert text == "accuracy matrix"
            stored = list(artifacts.rglob("notes.txt"))
            assert len(stored) == 1, "the artifact should sit in --artifacts-destination"
        finally:
            mlflow.set_tracking_uri(previous)
