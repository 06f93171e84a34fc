"""Continual-learning metrics from an accuracy matrix.

``R[i][j]`` is the accuracy on task j after training on tasks 0..i (0-based), a square
T x T matrix (rows may be fewer than T while a run is in progress: metrics then describe the
tasks seen so far, row ``i = len(R) - 1``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

Matrix = Sequence[Sequence[float]]

# Metrics an accuracy matrix cannot measure in a scenario: reported as NaN there, and no sweep may
# select on them. Class-IL: the incremental head masks the units of tasks not yet seen, so before
# task j is trained its accuracy is 0 both at initialisation and after task j-1, and forward
# transfer is 0 by construction whatever the model learned.
UNMEASURABLE = {"class": ("fwt",)}
# Metrics only a reference accuracy per task (a*_k, `Reference`) makes measurable.
WITH_REFERENCE = ("intransigence", "min_plasticity_ratio")


def average_accuracy(R: Matrix) -> float:
    """Mean accuracy over the tasks seen so far after the last trained task: (1/(i+1)) sum_{j<=i} R[i][j]."""
    i = len(R) - 1
    return sum(R[i][: i + 1]) / (i + 1)


def accuracy_current_task(R: Matrix) -> float:
    """R[i][i]: the accuracy on the task just learned (plasticity; a model that stopped learning is at chance)."""
    i = len(R) - 1
    return R[i][i]


def min_accuracy_current_task(R: Matrix) -> float:
    """min_{k<=i} R[k][k]: the lowest accuracy any task had right after it was learned."""
    return min(R[k][k] for k in range(len(R)))


def forgetting(R: Matrix) -> float:
    """Average forgetting (Chaudhry et al. 2018, eq. 2-3) after the last row i.

    f_j = max_{l in 0..i-1} R[l][j] - R[i][j] for j < i, averaged over j < i. 0 after one task.
    """
    i = len(R) - 1
    if i == 0:
        return 0.0
    return sum(max(R[l][j] for l in range(i)) - R[i][j] for j in range(i)) / i


def backward_transfer(R: Matrix) -> float:
    """BWT (Lopez-Paz & Ranzato 2017): (1/i) sum_{j<i} (R[i][j] - R[j][j]); negative means forgetting."""
    i = len(R) - 1
    if i == 0:
        return 0.0
    return sum(R[i][j] - R[j][j] for j in range(i)) / i


def forward_transfer(R: Matrix, initial: Sequence[float]) -> float:
    """FWT (Lopez-Paz & Ranzato 2017): (1/i) sum_{j=1..i} (R[j-1][j] - b_j).

    ``initial[j]`` = b_j, the accuracy of the randomly initialised model on task j.
    """
    i = len(R) - 1
    if i == 0:
        return 0.0
    return sum(R[j - 1][j] - initial[j] for j in range(1, i + 1)) / i


def intransigence(R: Matrix, reference: Sequence[float]) -> float:
    """Average intransigence (Chaudhry et al. 2018, eq. 4): (1/(i+1)) sum_{k<=i} (a*_k - R[k][k]).

    ``reference[k]`` = a*_k, the accuracy on task k of a reference model (e.g. `joint`) trained with
    access to all data of tasks 0..k.
    """
    i = len(R) - 1
    return sum(reference[k] - R[k][k] for k in range(i + 1)) / (i + 1)


def min_plasticity_ratio(R: Matrix, reference: Sequence[float]) -> float:
    """min_{k<=i} R[k][k] / a*_k: the lowest share of the reference's accuracy any task reached right
    after it was learned. De Lange et al.'s continual hyperparameter framework (TPAMI 2021) keeps a
    setting when the task just learned is within ``drop`` of fine-tuning's (0.2: a ratio >= 0.8)."""
    return min(R[k][k] / reference[k] if reference[k] > 0 else math.inf for k in range(len(R)))


class Reference(NamedTuple):
    """a*_k per task on the validation and the test split: a reference model's accuracy on task k right
    after learning it (`joint`: Chaudhry et al.'s model trained on tasks 0..k; `naive`: fine-tuning,
    the most a task can be learned when nothing holds the weights)."""

    val: list[float]
    test: list[float]


def summary(R: Matrix, initial: Sequence[float] | None = None, reference: Sequence[float] | None = None,
            scenario: str | None = None) -> dict:
    """All metrics that the available inputs allow, keyed by name; NaN for those ``scenario``
    cannot measure (`UNMEASURABLE`)."""
    out = {
        "average_accuracy": average_accuracy(R),
        "forgetting": forgetting(R),
        "bwt": backward_transfer(R),
        "accuracy_current_task": accuracy_current_task(R),
        "min_accuracy_current_task": min_accuracy_current_task(R),
    }
    if initial is not None:
        out["fwt"] = forward_transfer(R, initial)
    if reference is not None:
        out["intransigence"] = intransigence(R, reference)
        out["min_plasticity_ratio"] = min_plasticity_ratio(R, reference)
    for name in UNMEASURABLE.get(scenario, ()):
        if name in out:
            out[name] = math.nan
    return out
