"""Metrics against hand-computed values, and against the papers' 1-based formulas on random matrices.

R[i][j]: accuracy on task j after training on tasks 0..i. The matrix below is chosen so that each
metric differs from the others (the best accuracy on task 0 is not on the diagonal, so forgetting is
not -BWT; forward transfer is not zero).
"""

from __future__ import annotations

import math
import random

import pytest

from clcore import metrics as M

R = [
    [0.90, 0.10, 0.20],
    [0.95, 0.80, 0.40],
    [0.50, 0.70, 0.95],
]
INITIAL = [0.12, 0.15, 0.25]  # b_j: accuracy of the untrained model
REFERENCE = [0.95, 0.90, 0.97]  # a*_k: e.g. a joint model


def test_average_accuracy_by_hand():
    assert M.average_accuracy(R[:1]) == pytest.approx(0.90)
    assert M.average_accuracy(R[:2]) == pytest.approx((0.95 + 0.80) / 2)
    assert M.average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.95) / 3)


def test_forgetting_chaudhry_2018_by_hand():
    assert M.forgetting(R[:1]) == 0.0
    assert M.forgetting(R[:2]) == pytest.approx(0.90 - 0.95)  # improved: negative forgetting
    # task 0: best 0.95 (after task 1) -> 0.50; task 1: best 0.80 -> 0.70
    assert M.forgetting(R) == pytest.approx(((0.95 - 0.50) + (0.80 - 0.70)) / 2)  # 0.275


def test_backward_transfer_lopez_paz_2017_by_hand():
    assert M.backward_transfer(R[:1]) == 0.0
    assert M.backward_transfer(R[:2]) == pytest.approx(0.95 - 0.90)
    assert M.backward_transfer(R) == pytest.approx(((0.50 - 0.90) + (0.70 - 0.80)) / 2)  # -0.25


def test_forward_transfer_lopez_paz_2017_by_hand():
    assert M.forward_transfer(R[:1], INITIAL) == 0.0
    assert M.forward_transfer(R[:2], INITIAL) == pytest.approx(0.10 - 0.15)
    assert M.forward_transfer(R, INITIAL) == pytest.approx(((0.10 - 0.15) + (0.40 - 0.25)) / 2)  # 0.05


def test_intransigence_chaudhry_2018_by_hand():
    assert M.intransigence(R[:1], REFERENCE) == pytest.approx(0.95 - 0.90)
    assert M.intransigence(R, REFERENCE) == pytest.approx(((0.95 - 0.90) + (0.90 - 0.80) + (0.97 - 0.95)) / 3)


def test_min_plasticity_ratio_de_lange_2021_by_hand():
    """Task 1 was learned to 0.80 where the reference reached 0.90: 0.889 of it, the lowest share."""
    assert M.min_plasticity_ratio(R[:1], REFERENCE) == pytest.approx(0.90 / 0.95)
    assert M.min_plasticity_ratio(R, REFERENCE) == pytest.approx(0.80 / 0.90)
    assert M.min_plasticity_ratio([[0.5]], [0.0]) == math.inf  # a reference that learned nothing bounds nothing


def test_plasticity_the_accuracy_on_the_task_just_learned_by_hand():
    assert M.accuracy_current_task(R[:2]) == 0.80 and M.accuracy_current_task(R) == 0.95
    assert M.min_accuracy_current_task(R[:1]) == 0.90 and M.min_accuracy_current_task(R) == 0.80


PLASTICITY = ("accuracy_current_task", "min_accuracy_current_task")


def test_summary_reports_what_the_inputs_allow():
    assert set(M.summary(R)) == {"average_accuracy", "forgetting", "bwt", *PLASTICITY}
    assert set(M.summary(R, INITIAL)) == {"average_accuracy", "forgetting", "bwt", "fwt", *PLASTICITY}
    full = M.summary(R, INITIAL, REFERENCE)
    assert full == {
        "average_accuracy": M.average_accuracy(R), "forgetting": M.forgetting(R), "bwt": M.backward_transfer(R),
        "fwt": M.forward_transfer(R, INITIAL), "intransigence": M.intransigence(R, REFERENCE),
        "accuracy_current_task": 0.95, "min_accuracy_current_task": 0.80,
        "min_plasticity_ratio": M.min_plasticity_ratio(R, REFERENCE),
    }


def test_perfect_learner_and_total_forgetter():
    T = 4
    perfect = [[1.0] * T for _ in range(T)]
    assert M.summary(perfect, [0.0] * T, [1.0] * T) == {
        "average_accuracy": 1.0, "forgetting": 0.0, "bwt": 0.0, "fwt": 1.0, "intransigence": 0.0,
        "accuracy_current_task": 1.0, "min_accuracy_current_task": 1.0, "min_plasticity_ratio": 1.0}
    forgetter = [[1.0 if j == i else 0.0 for j in range(T)] for i in range(T)]  # remembers the last task only
    assert M.average_accuracy(forgetter) == pytest.approx(1 / T)
    assert M.forgetting(forgetter) == pytest.approx(1.0)
    assert M.backward_transfer(forgetter) == pytest.approx(-1.0)


# Papers' definitions, written 1-based and independently of clcore.metrics.
def _paper_metrics(a, b, star, k):
    """a[l][j] 1-based (a[0] unused); after training task k."""
    avg = sum(a[k][j] for j in range(1, k + 1)) / k
    fgt = 0.0 if k == 1 else sum(max(a[l][j] for l in range(1, k)) - a[k][j] for j in range(1, k)) / (k - 1)
    bwt = 0.0 if k == 1 else sum(a[k][j] - a[j][j] for j in range(1, k)) / (k - 1)
    fwt = 0.0 if k == 1 else sum(a[j - 1][j] - b[j] for j in range(2, k + 1)) / (k - 1)
    intr = sum(star[j] - a[j][j] for j in range(1, k + 1)) / k
    return {"average_accuracy": avg, "forgetting": fgt, "bwt": bwt, "fwt": fwt, "intransigence": intr,
            "accuracy_current_task": a[k][k], "min_accuracy_current_task": min(a[j][j] for j in range(1, k + 1)),
            "min_plasticity_ratio": min(a[j][j] / star[j] for j in range(1, k + 1))}


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_the_papers_formulas_on_random_matrices(seed):
    rng = random.Random(seed)
    T = rng.randint(2, 7)
    R_ = [[rng.random() for _ in range(T)] for _ in range(T)]
    b = [rng.random() for _ in range(T)]
    star = [rng.uniform(0.1, 1.0) for _ in range(T)]
    one_based = [[None] * (T + 1)] + [[None] + row for row in R_]
    for k in range(1, T + 1):  # also on partial matrices (runs in progress)
        got = M.summary(R_[:k], b, star)
        want = _paper_metrics(one_based, [None] + b, [None] + star, k)
        assert got == pytest.approx(want), k


def test_forward_transfer_is_nan_where_the_scenario_cannot_measure_it():
    """Class-IL masks unseen tasks' units: R[j-1][j] = b_j = 0 always, so FWT would be 0 by construction."""
    R = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 0.7]]
    assert M.summary(R, [0.0, 0.0, 0.0], scenario="task")["fwt"] == 0.0
    assert math.isnan(M.summary(R, [0.0, 0.0, 0.0], scenario="class")["fwt"])
    assert M.summary(R, [0.0, 0.0, 0.0], scenario="class")["average_accuracy"] == pytest.approx(1.7 / 3)


def test_class_il_runs_report_nan_forward_transfer(synthetic):
    from clcore.train import run
    from conftest import small_config

    result = run(small_config({"benchmark.scenario": "class"}), raw=synthetic)
    assert math.isnan(result.metrics["val_fwt"]) and math.isnan(result.metrics["test_fwt"])
    assert all(r[j] == 0.0 for i, r in enumerate(result.val_matrix[:-1]) for j in range(i + 1, 5))
    task = run(small_config(), raw=synthetic)
    assert math.isfinite(task.metrics["val_fwt"])
