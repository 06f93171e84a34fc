"""benchmarks/results.py: the naive baseline on the same budget, the verdict rule, and docs/results.md
being what the measured rows say (no run here: the rows take minutes to hours on real MNIST)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from clcore.config import ExperimentConfig
from sweeps.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import results  # noqa: E402

SWEPT = [name for name, row in results.ROWS.items() if row.sweep]


def test_every_row_has_its_reproduce_config_and_sweep():
    for name, row in results.ROWS.items():
        config = ExperimentConfig.from_yaml(ROOT / "configs" / "reproduce" / f"{name}.yaml")
        if row.sweep:  # the sweep tunes the reproduction's own protocol: same benchmark, model, training length
            spec = SweepSpec.from_yaml(ROOT / "search_spaces" / f"{name}.yaml")
            trial = spec.example_config()
            for section in ("benchmark", "model"):
                ours, theirs = trial.to_dict()[section], config.to_dict()[section]
                differ = {k for k in ours if ours[k] != theirs[k]} - {"val_fraction"}
                assert not differ, (name, section, differ)
            assert trial.train.steps_per_task == config.train.steps_per_task, name
            assert trial.strategy.fisher == config.strategy.fisher, name
            assert 0 < trial.benchmark.val_fraction and config.benchmark.val_fraction == 0.0  # selection on validation


@pytest.mark.parametrize("name", SWEPT)
def test_the_naive_baseline_tunes_the_shared_hyperparameters_on_the_same_budget(name):
    sweep = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    naive = SweepSpec.from_dict(results.naive_baseline(sweep))
    original = SweepSpec.from_dict(sweep)
    assert naive.example_config().strategy.name == "naive"
    assert list(naive.search) == [k for k in original.search if k.startswith("train.")] == ["train.lr"]
    assert naive.search["train.lr"] == original.search["train.lr"]
    assert naive.algorithm.num_samples == original.algorithm.num_samples
    assert naive.algorithm.seed == original.algorithm.seed
    assert naive.scheduler == original.scheduler
    assert naive.base["train"] == original.base["train"] and naive.base["benchmark"] == original.base["benchmark"]
    assert naive.algorithm.points_to_evaluate == [{"train.lr": 0.001}]  # the paper's point, its lr alone
    assert sweep == yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())  # not modified
    twin = name.replace("_online_ewc_", "_ewc_") if "_online_" in name else name.replace("_ewc_", "_online_ewc_")
    twin_sweep = yaml.safe_load((ROOT / "search_spaces" / f"{twin}.yaml").read_text())
    assert results.naive_baseline(twin_sweep)["name"] == naive.name  # EWC and online EWC: one protocol, one baseline


def test_a_sweep_with_nothing_shared_has_no_naive_baseline():
    sweep = yaml.safe_load((ROOT / "search_spaces" / f"{SWEPT[0]}.yaml").read_text())
    sweep["search"] = {k: v for k, v in sweep["search"].items() if not k.startswith("train.")}
    with pytest.raises(ValueError, match="searches no train"):
        results.naive_baseline(sweep)


def figure(mean: float, std: float = 0.0) -> dict:
    return {"mean": mean, "std": std}


def cell(mean: float) -> dict:
    return {"values": {}, "seeds": [1, 2], "seconds": 10, "average_accuracy": figure(mean), "forgetting": figure(0.1),
            "accuracy_right_after_learning": figure(0.9), "lowest_right_after_learning": figure(0.8)}


@pytest.mark.parametrize("name, value, verdict", [
    ("rwalk_split_mnist", 0.971, "within 2 pt"),            # published 0.99 +- 0.01: two stds
    ("rwalk_split_mnist", 0.969, "OUTSIDE 2 pt"),
    ("vandeven_ewc_split_mnist_domain", 0.649, "within 1 pt"),  # a mean alone: one point
    ("vandeven_ewc_split_mnist_domain", 0.652, "OUTSIDE 1 pt"),
])
def test_a_reproduction_counts_within_two_published_stds_or_one_point(name, value, verdict):
    row = {"name": name, "reproduced": cell(value), "machine": "2 CPUs", "command": "python ..."}
    line = next(line for line in results.page([row]).splitlines() if line.startswith(f"| `{name}`"))
    assert f"**{100 * value:.1f} ± 0.0**" in line and verdict in line


def test_docs_results_is_the_page_of_the_measured_rows():
    rows = [json.loads(f.read_text()) for f in sorted(results.RESULTS.glob("*.json"))]
    assert rows, "benchmarks/results/ holds no measured row"
    assert (ROOT / "docs" / "results.md").read_text() == results.page(rows), \
        "docs/results.md is stale: python benchmarks/results.py --write"
