"""The layers' boundaries, each checked in a fresh interpreter: clcore imports nothing of the sweep
service, and the quick commands import neither torch nor Ray (benchmarks/cli_startup.py times them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.cli_startup import HEAVY, commands, example_sweep_folder, heavy_imports  # noqa: E402


def imported_after(code: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                           "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_clcore_and_every_submodule_import_no_sweep_service_module():
    loaded = imported_after("import pkgutil, importlib, clcore\n"
                            "for m in pkgutil.walk_packages(clcore.__path__, 'clcore.'):\n"
                            "    importlib.import_module(m.name)\n"
                            "import clcore.strategies as s\n"
                            "[s.strategy_class(n) for n in s.catalogue.names()]")
    assert "torch" in loaded  # the submodules were really imported
    assert not {"ray", "mlflow", "optuna", "sweeps"} & loaded


def test_validating_a_config_imports_no_torch():
    loaded = imported_after("import clcore\n"
                            "c = clcore.ExperimentConfig.from_dict({'strategy': {'name': 'si', 'lambda': 2}})\n"
                            "assert c.strategy.lambda_ == 2.0")
    assert not {"torch", "ray", "mlflow", "optuna"} & loaded


@pytest.mark.parametrize("name", ["clsweep --help", "clsweep run --dry-run", "clsweep status"])
def test_quick_commands_import_no_torch_ray_mlflow_or_optuna(name, tmp_path):
    command = commands(example_sweep_folder(tmp_path))[name]
    assert heavy_imports(command) == []


def test_the_import_probe_sees_a_heavy_import():
    assert set(HEAVY) >= {"torch", "ray"}
    assert heavy_imports([sys.executable, "-c", "import torch"]) == ["torch"]
