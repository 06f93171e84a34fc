"""PNG plots that `sweeps.tracking` logs as MLflow artifacts (matplotlib, Agg backend).

Per trial: the accuracy matrix as a heatmap. Per sweep (on the parent run): the objective
against the strategy's lambda on a log axis, the accuracy/forgetting trade-off with its Pareto
front, and every trial's learning curve on each task. Each function writes one file and returns
its path, or None when the trials give it nothing to draw (no lambda, no finished trial, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from clcore.config import ExperimentConfig

class TrialPoint(NamedTuple):
    """A trial as the sweep plots see it."""

    trial_id: str
    config: ExperimentConfig
    status: str  # finished | rejected | stopped_early | failed | running
    last: dict  # its last reported result (metrics, ``test_matrix``)


STATUS_STYLE = {  # marker, fill, label
    "finished": ("o", True, "finished"),
    "stopped_early": ("v", False, "stopped early (value after fewer tasks)"),
    "failed": ("x", True, "failed (no value; marked on the lambda axis)"),
    "rejected": ("D", False, "rejected (broke a requirement of the objective)"),
    "running": ("s", False, "not finished yet"),
}


def accuracy_heatmap(matrix: Sequence[Sequence[float]], n_tasks: int, path: Path, title: str) -> Path:
    """Heatmap of R[i][j] (row i: after training task i; column j: evaluated on task j)."""
    rows = [list(r) + [float("nan")] * (n_tasks - len(r)) for r in matrix]
    size = 1.2 + 0.55 * n_tasks
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(rows, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if value > 0.6 else "white")
    ax.set_xticks(range(n_tasks))
    ax.set_yticks(range(len(rows)))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
    return _save(fig, path)


def accuracy_vs_lambda(trials: Sequence[TrialPoint], metric: str, path: Path) -> Optional[Path]:
    """``metric`` (last reported value) against ``strategy.lambda`` on a log axis, one colour per
    strategy. Failed trials have no value: they are marked on the lambda axis."""
    points = [t for t in trials if t.config.strategy.lambda_ is not None and metric in t.last]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    strategies = sorted({t.config.strategy.name for t in points})
    colors = dict(zip(strategies, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    on_lambda_axis = blended_transform_factory(ax.transData, ax.transAxes)
    seen_labels = set()
    for t in points:
        marker, filled, status_label = STATUS_STYLE.get(t.status, STATUS_STYLE["running"])
        label = f"{t.config.strategy.name}, {status_label}"
        color = colors[t.config.strategy.name]
        if t.status == "failed":
            style = {"color": color, "y": 0.03, "transform": on_lambda_axis, "clip_on": False}
        else:
            style = {"facecolors": color if filled else "none", "edgecolors": color, "y": t.last[metric]}
        ax.scatter(x=t.config.strategy.lambda_, marker=marker, s=42, label=None if label in seen_labels else label,
                   **style)
        seen_labels.add(label)
    ax.set_xscale("log")
    lambdas = [t.config.strategy.lambda_ for t in points]
    ax.set_xlim(min(lambdas) / 2, max(lambdas) * 2)  # failed trials do not widen the axis by themselves
    ax.set_xlabel("strategy.lambda (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs lambda ({len(points)} trials)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (forgetting, accuracy) points no other point beats on both (lower forgetting,
    higher accuracy), sorted by forgetting."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_accuracy = [], float("-inf")
    for i in order:
        if points[i][1] > best_accuracy:
            front.append(i)
            best_accuracy = points[i][1]
    return front


def tradeoff(trials: Sequence[TrialPoint], prefix: str, path: Path) -> Optional[Path]:
    """Average accuracy vs forgetting of the finished trials, with the Pareto front."""
    acc_key, fgt_key = f"{prefix}average_accuracy", f"{prefix}forgetting"
    done = [t for t in trials if t.status == "finished" and acc_key in t.last and fgt_key in t.last]
    if not done:
        return None
    points = [(t.last[fgt_key], t.last[acc_key]) for t in done]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=36, alpha=0.7, label="finished trials")
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-o", color="C3",
            drawstyle="steps-post", label="Pareto front")
    for i in front:
        lam = done[i].config.strategy.lambda_
        ax.annotate(done[i].config.strategy.name + (f" λ={lam:.3g}" if lam is not None else ""),
                    points[i], textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{fgt_key} (lower is better)")
    ax.set_ylabel(f"{acc_key} (higher is better)")
    ax.set_title("accuracy / forgetting trade-off", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def learning_curves(trials: Sequence[TrialPoint], best_trial_id: Optional[str], path: Path) -> Optional[Path]:
    """One panel per task j: test accuracy on task j after each task trained, one line per trial."""
    curves = [t for t in trials if t.last.get("test_matrix")]
    if not curves:
        return None
    n_tasks = max(t.config.benchmark.n_tasks for t in curves)
    cols = min(n_tasks, 5)
    rows = -(-n_tasks // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows + 0.4), squeeze=False, sharey=True)
    for j in range(rows * cols):
        ax = axes[j // cols][j % cols]
        if j >= n_tasks:
            ax.axis("off")
            continue
        for t in curves:
            matrix = t.last["test_matrix"]
            xs = [i + 1 for i in range(j, len(matrix))]
            ys = [matrix[i][j] for i in range(j, len(matrix))]
            if not xs:
                continue
            best = t.trial_id == best_trial_id
            ax.plot(xs, ys, "-o" if best else "-", color="C3" if best else "0.55", lw=2 if best else 0.8,
                    ms=3, alpha=1.0 if best else 0.6, zorder=3 if best else 2,
                    label="best trial" if best and j == 0 else None)
        ax.set_title(f"task {j}", fontsize=9)
        ax.set_xlim(0.5, n_tasks + 0.5)
        ax.set_ylim(0, 1.02)
        ax.set_xticks(range(1, n_tasks + 1))
        ax.grid(True, alpha=0.3)
        if j % cols == 0:
            ax.set_ylabel("test accuracy")
        if j // cols == rows - 1:
            ax.set_xlabel("tasks seen")
    if best_trial_id is not None:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"learning curves per task ({len(curves)} trials; grey: others)", fontsize=10)
    return _save(fig, path)


def protocols_against_compute(rows: Sequence[dict], path: Path) -> Optional[Path]:
    """`clsweep compare`: each protocol's test average accuracy (mean ± std over its evaluation seeds)
    against the task trainings it spent, one point per protocol."""
    points = [r for r in rows if r.get("test_average_accuracy") is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, r in enumerate(points):
        ax.errorbar(r["task_trainings"], r["test_average_accuracy"], yerr=r["test_average_accuracy_std"], fmt="o",
                    capsize=4, color=f"C{i % 10}", label=r["protocol"])
        ax.annotate(r["protocol"], (r["task_trainings"], r["test_average_accuracy"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=7)
    ax.set_xlabel("task trainings (every phase of the protocol's sweep)")
    ax.set_ylabel("test average accuracy (evaluation seeds)")
    ax.set_title("selection protocols: accuracy against compute", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
