"""benchmarks/sweep.py's compute to target: the epochs of every task begun before the first complete
trial reached the target, counted from the per-task rows that trials write to ``tasks.jsonl``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sweeps.runner import SweepState, TrialRecord
from sweeps.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[1]
spec_file = importlib.util.spec_from_file_location("bench_sweep", ROOT / "benchmarks" / "sweep.py")
bench = importlib.util.module_from_spec(spec_file)
spec_file.loader.exec_module(bench)


def trial(trial_id: str, started: float, ends: list[float], scores: list[float], epochs_per_task: int = 2,
          status: str = "TERMINATED") -> TrialRecord:
    """A trial whose clcore.run began at ``started`` and reported task k at ``ends[k]``."""
    rows = [{"timestamp": end, "clcore_seconds": end - started, "epochs_trained": epochs_per_task * (k + 1),
             "tasks_seen": k + 1, "val_average_accuracy": score} for k, (end, score) in enumerate(zip(ends, scores))]
    return TrialRecord(trial_id, status, {}, rows, f"/nowhere/{trial_id}", n_tasks=3)


@pytest.fixture
def state() -> SweepState:
    # the sweep file's objective: val_average_accuracy
    spec = SweepSpec.from_yaml(ROOT / "search_spaces" / "ewc_split_mnist_task.yaml")
    return SweepState(spec, Path("/nowhere"), [
        trial("a", 0.0, [10.0, 20.0, 30.0], [0.99, 0.95, 0.90]),   # complete, below the target
        trial("b", 5.0, [15.0], [0.97]),                            # stopped after one task
        trial("c", 12.0, [22.0, 32.0, 42.0], [0.99, 0.97, 0.96]),  # complete: reaches 0.95 at t=42
        trial("d", 35.0, [45.0, 55.0], [0.98, 0.97]),               # under way at t=42 (task 1 begun at 35)
        trial("e", 50.0, [60.0, 70.0, 80.0], [0.99, 0.99, 0.99]),  # begun after t=42: not counted
    ])


def test_task_epochs_start_where_the_previous_task_ended():
    assert bench.task_epochs(trial("x", 3.0, [10.0, 20.0], [0.9, 0.9], epochs_per_task=4)) == [(3.0, 4), (10.0, 4)]


def test_compute_to_target_counts_tasks_begun_before_the_target_was_reached(state):
    # a: 3 tasks, b: 1, c: 3, d: its first task (begun at 35 < 42) but not its second (begun at 45); 2 epochs each
    assert bench.compute_to_target(state, 0.95) == 2 * (3 + 1 + 3 + 1)


def test_compute_to_target_ignores_stopped_trials_and_is_none_when_never_reached(state):
    assert bench.compute_to_target(state, 0.985) == 2 * (3 + 1 + 3 + 2 + 3)  # only e, complete at 80, gets there
    assert bench.compute_to_target(state, 0.9999) is None  # b and d scored 0.97/0.98 but never completed


def test_median_counts_never_reached_as_worst():
    assert bench.median_or_none([0.3, None, 0.1]) == 0.3
    assert bench.median_or_none([None, None, 0.1]) is None
