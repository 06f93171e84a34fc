"""README's test command on a fresh clone: a tool it cannot install is reported and its tests skip.

CI runs ``make test`` (README's test command, and all of ``.ci/run``) on a clean checkout of a
machine where nothing was preinstalled, so the installing path (Compose plugin, Chromium,
PostgreSQL through scripts/test-tools.sh) is proven there on every run. This test proves the other
path on any machine: in a fresh clone in a temporary folder, with those programs hidden from PATH
and installs forbidden (``CLSWEEP_INSTALL=0``, as for a user without root), the tools step of
``make test`` reports each missing program with the command that installs it and exits 0, and the
tests that drive those programs skip with the same advice instead of failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = {"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "docker", "docker-compose"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse"],
                                                     capture_output=True).returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout, so there is nothing to clone")
    target = tmp_path_factory.mktemp("fresh") / "clsweep"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    return target


@pytest.fixture(scope="module")
def bare_path():
    """A PATH holding every program of this one except the tools the suite may install (in a folder
    other users may enter: as root, scripts/postgres.sh runs its tools as the OS user postgres)."""
    folder = Path(tempfile.mkdtemp(prefix="clsweep-bare-bin-"))
    folder.chmod(0o755)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = folder / entry.name
            if entry.name in HIDDEN or target.exists() or not os.access(entry.path, os.X_OK):
                continue
            target.symlink_to(entry.path)
    yield str(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _env(bare_path: str, clone: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CLSWEEP_UI"))}
    return {**env, "PATH": bare_path, "CLSWEEP_INSTALL": "0", "PYTHONPATH": str(clone)}


def test_make_test_installs_the_tools_before_the_suite(clone):
    steps = subprocess.run(["make", "-n", "test"], cwd=clone, capture_output=True, text=True, timeout=60)
    assert steps.returncode == 0, steps.stderr
    lines = steps.stdout.splitlines()
    tools = next(i for i, line in enumerate(lines) if "scripts/test-tools.sh" in line)
    suite = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert tools < suite
    assert (clone / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"  # CI runs just that


def test_missing_tools_are_reported_with_their_install_command(clone, bare_path):
    done = subprocess.run(["bash", "scripts/test-tools.sh"], cwd=clone, env=_env(bare_path, clone),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "missing chromium (CLSWEEP_INSTALL=0): the MLflow UI test skips; install it with: apt-get install " \
           "chromium" in out
    assert "missing the docker client: the compose tests skip" in out
    assert "installing" not in out  # CLSWEEP_INSTALL=0 installs nothing


def test_tests_that_need_a_missing_tool_skip_saying_how_to_install_it(clone, bare_path):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/test_docker.py", "tests/test_ui.py",
                           # the slowest tests that need no such tool (this suite runs them itself)
                           "--deselect", "tests/test_docker.py::test_dockerfile_install_commands_resolve",
                           "--deselect", "tests/test_docker.py::test_documented_token_command_writes_the_token_once"],
                          cwd=clone, env=_env(bare_path, clone), capture_output=True, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-4000:]
    assert " failed" not in out and " error" not in out, out[-4000:]
    assert "install it with: apt-get install chromium" in out
    assert "no docker client on PATH" in out and "install Docker's CLI" in out
