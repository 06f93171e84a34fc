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
    assert list(results.ROWS) == list(results.TARGETS)  # reproduce.py checks the same configs
    for name, row in results.ROWS.items():
        assert results.TARGETS[name][1] == row.published, name
        config = ExperimentConfig.from_yaml(ROOT / "configs" / "reproduce" / f"{name}.yaml")
        if row.sweep:  # the sweep tunes the reproduction's own protocol: same benchmark, model, training length
            spec = SweepSpec.from_yaml(ROOT / "search_spaces" / f"{name}.yaml")
            trial = spec.example_config()
            # a prefix protocol's search sees tasks 0..k-1 of its stream; the reproduction is what the chosen
            # values then train: the whole stream, or (evaluate_on: rest) the tasks after the prefix alone
            n_tasks = spec.base["benchmark"]["n_tasks"]
            evaluated = spec.evaluation_range or [0, n_tasks]
            assert config.benchmark.n_tasks == evaluated[1] - evaluated[0], name
            for section in ("benchmark", "model"):
                ours, theirs = trial.to_dict()[section], config.to_dict()[section]
                differ = {k for k in ours if ours[k] != theirs[k]} - {"val_fraction", "n_tasks", "task_range"}
                assert not differ, (name, section, differ)
            for key in ("epochs", "steps_per_task", "batch_size", "optimizer", "reset_optimizer"):
                assert getattr(trial.train, key) == getattr(config.train, key), (name, key)
            fixed = {k: v for k, v in trial.strategy.params.items() if f"strategy.{k}" not in spec.search}
            assert trial.strategy.name == config.strategy.name, name
            assert fixed == {k: config.strategy.params[k] for k in fixed}, name
            assert 0 < trial.benchmark.val_fraction and config.benchmark.val_fraction == 0.0  # selection on validation
            published = spec.algorithm.points_to_evaluate[0]  # the paper's point is the first trial
            assert published == {k: config.flat()[k] for k in published}, name


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
    assert naive.protocol == original.protocol
    lr = original.algorithm.points_to_evaluate[0]["train.lr"]
    assert naive.algorithm.points_to_evaluate == [{"train.lr": lr}]  # the paper's point, its lr alone
    assert sweep == yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())  # not modified
    if name.startswith("vandeven_"):  # EWC and online EWC: one protocol, one baseline
        twin = name.replace("_online_ewc_", "_ewc_") if "_online_" in name else name.replace("_ewc_", "_online_ewc_")
        twin_sweep = yaml.safe_load((ROOT / "search_spaces" / f"{twin}.yaml").read_text())
        assert results.naive_baseline(twin_sweep)["name"] == naive.name


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
    ("agem_rwalk_permuted_mnist", 0.846, "within 1.1 pt"),     # 85.7 +- 0.56: two stds, 1.12 points
    ("agem_rwalk_permuted_mnist", 0.845, "OUTSIDE 1.1 pt"),
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


def test_the_table_counts_a_shared_sweep_once_and_names_a_realistic_selection():
    def row(name, naive_seconds, selection="end_of_training: tuned on all 5 tasks, evaluated on every task"):
        return {"name": name, "machine": "2 CPUs", "command": "python ...",
                **{k: {**cell(0.9), "seconds": 10} for k in ("reproduced", "tuned", "naive_tuned")},
                "sweep": {"name": name, "selection": selection, "trials": 4, "task_trainings": 20, "seconds": 100},
                "naive_sweep": {"name": "naive_shared", "trials": 4, "task_trainings": 20, "seconds": naive_seconds}}
    rows = [row("vandeven_ewc_split_mnist_task", 200), row("vandeven_online_ewc_split_mnist_task", 200),
            row("agem_rwalk_permuted_mnist", 50, "prefix: tuned on tasks 0..2 of 20, evaluated on tasks 3..19 alone")]
    rows[2]["naive_sweep"]["name"] = "naive_agem"
    rows[1]["realistic"] = {**cell(0.93), "seconds": 7}
    rows[1]["realistic_sweep"] = {"name": "vandeven_online_ewc_split_mnist_task-prefix2", "trials": 4,
                                  "selection": "prefix: tuned on tasks 0..1 of 5, evaluated on every task",
                                  "task_trainings": 8, "seconds": 40}
    assert results.table_seconds(rows) == 3 * 30 + 3 * 100 + 200 + 50 + 7 + 40
    text = results.page(rows)
    assert "The whole table, as measured: 687 s" in text
    line = {name: next(ln for ln in text.splitlines() if ln.startswith(f"| `{name}`"))
            for name in ("agem_rwalk_permuted_mnist", "vandeven_ewc_split_mnist_task",
                         "vandeven_online_ewc_split_mnist_task")}
    tuned, realistic = line["agem_rwalk_permuted_mnist"].split(" | ")[3:5]
    assert "selected by prefix: tuned on tasks 0..2 of 20" in tuned and realistic == "the tuned cell: the paper's own protocol"
    tuned, realistic = line["vandeven_ewc_split_mnist_task"].split(" | ")[3:5]
    assert "selected by" not in tuned and realistic == "prefix:2 not run yet"
    tuned, realistic = line["vandeven_online_ewc_split_mnist_task"].split(" | ")[3:5]
    assert realistic.startswith("**93.0 ± 0.0**") and "selected by prefix: tuned on tasks 0..1 of 5" in realistic


@pytest.mark.parametrize("name", [n for n, row in results.ROWS.items() if row.realistic])
def test_the_realistic_sweep_is_the_rows_sweep_under_a_prefix_on_which_every_parameter_acts(name):
    original = SweepSpec.from_yaml(ROOT / "search_spaces" / f"{name}.yaml")
    spec = SweepSpec.from_dict(results.realistic_sweep(name))  # valid: a searched penalty acts from task 1
    assert spec.name == f"{name}-prefix2" and (spec.protocol.name, spec.protocol.tasks) == ("prefix", 2)
    assert spec.protocol.evaluate_on == "all" and spec.evaluation_range is None  # the whole stream is evaluated
    assert spec.example_config().benchmark.task_range == [0, 2]  # the search sees tasks 0 and 1 alone
    assert (spec.search, spec.algorithm, spec.scheduler, spec.base) == \
        (original.search, original.algorithm, original.scheduler, original.base)
