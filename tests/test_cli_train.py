"""`clsweep train CONFIG [--set k=v ...] [--json]`, run as a real subprocess where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import clcore
from clcore.config import ExperimentConfig
from sweeps.cli import main

CONFIG_YAML = """\
# a small synthetic run
benchmark:
  name: synthetic
  scenario: class
  n_tasks: 5
model:
  name: mlp
  hidden_sizes: [32]
train:
  lr: 0.1
  batch_size: 32
  device: cpu
"""


def clsweep_command() -> list[str]:
    """The installed console script when there is one (what users run), else the module."""
    script = Path(sys.executable).with_name("clsweep")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sweeps.cli"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as in conftest: one torch thread
    return subprocess.run([*clsweep_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_json_prints_the_result_with_overrides_applied(tmp_path):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(CONFIG_YAML)
    proc = run_cli("train", str(config_path), "--set", "train.epochs=2", "--set", "seed=3",
                   "--set", "strategy.name=joint", "--set", "benchmark.train_samples_per_task=200",
                   "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert data["config"]["train"]["epochs"] == 2 and data["config"]["seed"] == 3
    assert data["config"]["strategy"] == {"name": "joint"}
    for key in ("val_matrix", "test_matrix"):
        assert len(data[key]) == 5 and all(len(row) == 5 for row in data[key])
        assert all(0.0 <= v <= 1.0 for row in data[key] for v in row)
    assert len(data["initial_test"]) == 5 and len(data["history"]) == 5
    expected_metrics = {"test_average_accuracy", "test_forgetting", "test_bwt", "test_fwt", "val_average_accuracy"}
    assert expected_metrics <= set(data["metrics"])
    assert data["device"] == "cpu"
    # the command runs exactly what clcore.run runs (same seed, same device: the same matrices)
    config = ExperimentConfig.from_yaml(config_path).with_overrides({
        "train.epochs": 2, "seed": 3, "strategy.name": "joint", "benchmark.train_samples_per_task": 200})
    assert ExperimentConfig.from_dict(data["config"]) == config
    assert clcore.run(config).test_matrix == data["test_matrix"]
    assert config_path.read_text() == CONFIG_YAML  # the config file is not rewritten


def test_bad_override_fails_before_training_and_writes_nothing(tmp_path):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(CONFIG_YAML)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "earlier.json").write_text('{"keep": true}')
    before = snapshot(tmp_path)
    proc = run_cli("train", str(config_path), "--set", "train.epochs=0", "--json", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "clsweep train: error: train.epochs: must be an integer >= 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("override, field, words", [
    ("benchmark.name=imagenet", "benchmark.name", ["split_mnist", "synthetic"]),
    ("model.name=vgg", "model.name", ["mlp", "cnn", "resnet18"]),
    ("strategy.name=lwf", "strategy.name", ["naive", "joint", "ewc", "ewcpp", "rwalk", "si", "mas"]),
    ("benchmark.n_tasks=10", "benchmark.n_tasks", ["[1, 2, 5]"]),
    ("train.lr=-1", "train.lr", ["> 0"]),
    ("train.batch_size=0", "train.batch_size", [">= 1"]),
    ("train.learning_rate=0.1", "train.learning_rate", ["train.lr"]),
    ("model.head=multi", "model.head", ["'incremental'"]),
], ids=lambda v: v if isinstance(v, str) and "=" in v else "")
def test_bad_input_exits_2_naming_the_field(override, field, words, tmp_path, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(CONFIG_YAML)
    assert main(["train", str(config_path), "--set", override]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"clsweep train: error: {field}:")
    for word in words:
        assert word in captured.err


def test_missing_data_exits_2_naming_files_and_root(tmp_path, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(CONFIG_YAML)
    empty = tmp_path / "empty-root"
    empty.mkdir()
    code = main(["train", str(config_path), "--set", "benchmark.name=split_mnist",
                 "--set", f"benchmark.data_dir={empty}", "--set", "benchmark.download=false"])
    err = capsys.readouterr().err
    assert code == 2 and "MNIST/raw/train-images-idx3-ubyte" in err and str(empty) in err
    code = main(["train", str(config_path), "--set", f"benchmark.data_dir={tmp_path / 'nowhere'}",
                 "--set", "benchmark.download=false"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("clsweep train: error: benchmark.data_dir:") and "nowhere" in err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_human_readable_output(tmp_path, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(CONFIG_YAML)
    assert main(["train", str(config_path), "--set", "benchmark.n_tasks=2"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy matrix" in out and "after task 1:" in out and "test_average_accuracy" in out


def test_train_json_is_strict_json_with_null_for_nan(tmp_path):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(CONFIG_YAML)
    proc = run_cli("train", str(config_path), "--set", "benchmark.val_fraction=0", "--set", "benchmark.n_tasks=2",
                   "--set", "benchmark.train_samples_per_task=100", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "NaN" not in proc.stdout
    data = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["metrics"]["val_average_accuracy"] is None  # no validation data: measured nothing
    assert data["metrics"]["test_average_accuracy"] > 0
