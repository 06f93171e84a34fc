"""The training loop: tasks, epochs (or steps per task), batches; evaluation after every task.

`run(config)` trains one model on the benchmark's tasks in order and returns a `Result` with the
validation and test accuracy matrices and the metrics. Per step it does one forward and one
backward of the task loss; the strategy then adds its penalty gradient in place
(see `clcore.strategies.base`). Nothing in the step synchronises with the device: losses are
kept in a device buffer and checked once per pass over the task (an epoch).

A callback receives a `TaskReport` after every task (metrics so far and a function that builds a
checkpoint); `run(config, resume_from=checkpoint)` continues after that task and gives the same
result as the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from clcore import metrics as M
from clcore.config import ExperimentConfig, TrainConfig
from clcore.data import Benchmark, RawData, Split, build_benchmark, load_raw
from clcore.models import ContinualModel, build_model
from clcore.strategies import Strategy, build_strategy


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite. ``task``, ``epoch`` and ``step`` are 0-based."""

    def __init__(self, task: int, epoch: int, step: int, value: float):
        self.task, self.epoch, self.step, self.value = task, epoch, step, value
        super().__init__(f"non-finite loss ({value}) at task {task}, epoch {epoch}, step {step} of that epoch; "
                         f"lower train.lr or the strategy's lambda")

    def __reduce__(self):  # picklable (Ray sends a failed trial's error to the driver)
        return type(self), (self.task, self.epoch, self.step, self.value)


@dataclass
class TaskReport:
    """What a callback sees after task ``task`` (0-based) has been trained and evaluated.

    The matrices are a snapshot (rows so far). ``checkpoint()`` copies the live training state, so it
    must be called inside the callback (or, for the last task, after `run` returns); called once the
    next task has started, it raises instead of mixing two points in time.
    """

    task: int
    n_tasks: int
    metrics: dict[str, float]
    val_matrix: list[list[float]]
    test_matrix: list[list[float]]
    checkpoint: Callable[[], dict]

    @property
    def tasks_seen(self) -> int:
        return self.task + 1


@dataclass
class Result:
    config: ExperimentConfig
    val_matrix: list[list[float]]
    test_matrix: list[list[float]]
    initial_val: list[float]
    initial_test: list[float]
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # per-task metrics, one dict per task
    device: str = "cpu"
    train_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "device": self.device,
            "train_seconds": self.train_seconds,
            "val_matrix": self.val_matrix,
            "test_matrix": self.test_matrix,
            "initial_val": self.initial_val,
            "initial_test": self.initial_test,
            "metrics": self.metrics,
            "history": self.history,
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return device


def make_optimizer(model: torch.nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    fused = device.type == "cuda"
    if train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=fused)
    return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                           weight_decay=train.weight_decay, fused=fused)


@torch.inference_mode()
def evaluate(model: ContinualModel, splits: Iterable[Split], batch_size: int) -> list[float]:
    """Accuracy on each split, in eval mode (the model's mode is restored afterwards); NaN for an empty split."""
    was_training = model.training
    model.eval()
    correct = []
    sizes = []
    for split in splits:
        hits = torch.zeros((), dtype=torch.int64, device=split.y.device)
        for start in range(0, len(split), batch_size):
            sl = slice(start, start + batch_size)
            hits += (model(split.x[sl], split.task_ids[sl]).argmax(1) == split.y[sl]).sum()
        correct.append(hits)
        sizes.append(len(split))
    model.train(was_training)
    return [c / n if n else math.nan for c, n in zip(torch.stack(correct).tolist(), sizes)]


def train_step(model: ContinualModel, strategy: Strategy, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               task_ids: torch.Tensor, y: torch.Tensor, idle: Iterable[torch.nn.Parameter] = (),
               autocast=contextlib.nullcontext()) -> torch.Tensor:
    """One training step, as `run` takes it: one forward and one backward of the task loss, the
    strategy's penalty gradient added in place, the ``idle`` parameters' gradients dropped (other
    tasks' heads: so weight decay and momentum leave them alone), the optimiser step, then the
    strategy's ``after_step``. Returns the task loss, detached, without synchronising."""
    with autocast:
        loss = F.cross_entropy(model(x, task_ids), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    strategy.add_penalty_grad(model)
    for p in idle:
        p.grad = None
    optimizer.step()
    strategy.after_step(model)
    return loss.detach()


def run(config: ExperimentConfig, callbacks: Iterable[Callable[[TaskReport], None]] = (), *,
        resume_from: Optional[dict] = None, raw: Optional[RawData] = None,
        benchmark: Optional[Benchmark] = None, reference: Optional[M.Reference] = None) -> Result:
    """Train on every task of ``config.benchmark`` in order; return the accuracy matrices and metrics.

    ``raw`` or ``benchmark`` skip loading data (a sweep shares them between trials).
    ``resume_from`` is a dict made by `TaskReport.checkpoint`. ``reference`` (a*_k per task on each
    split, e.g. from a `joint` run) adds intransigence and the minimum plasticity ratio to the metrics.
    """
    config.validate()
    device = resolve_device(config.train.device)
    config.train.check_amp(device.type)
    torch.manual_seed(config.seed)
    if benchmark is None:
        benchmark = build_benchmark(config.benchmark, raw if raw is not None else load_raw(config.benchmark), device)
    tasks = benchmark.tasks
    model = build_model(config.model, input_shape=benchmark.input_shape, scenario=benchmark.scenario,
                        n_tasks=benchmark.n_tasks, classes_per_task=benchmark.classes_per_task,
                        mean=benchmark.mean, std=benchmark.std).to(device)
    strategy: Strategy = build_strategy(config.strategy)
    optimizer = make_optimizer(model, config.train, device)
    stop = min(benchmark.n_tasks, config.benchmark.tasks_run)  # visible_tasks: the stream goes on in a later run
    batch_order = torch.Generator(device=device).manual_seed(config.seed)
    eval_bs = config.train.eval_batch_size
    cfg = config.train
    scenario = config.benchmark.scenario
    val_star, test_star = (reference.val, reference.test) if reference is not None else (None, None)

    val_rows: list[list[float]] = []
    test_rows: list[list[float]] = []
    history: list[dict[str, float]] = []
    start_task, epochs_trained, steps_trained = 0, 0, 0
    if resume_from is not None:
        # Loaded optimizer state would alias the checkpoint's tensors and be updated in place:
        # work on a copy so the caller's checkpoint stays as written (and can be resumed again).
        resume_from = copy.deepcopy(resume_from)
        model.load_state_dict(resume_from["model"])
        strategy.load_state_dict(resume_from["strategy"])
        if resume_from.get("optimizer") is not None:
            optimizer.load_state_dict(resume_from["optimizer"])
            _configure(optimizer, cfg)  # hyperparameters come from the (maybe mutated) config
        _set_rng_state(resume_from["rng"], batch_order, device)
        val_rows, test_rows = resume_from["val_matrix"], resume_from["test_matrix"]
        initial_val, initial_test = resume_from["initial_val"], resume_from["initial_test"]
        history = resume_from["history"]
        start_task, epochs_trained = resume_from["next_task"], resume_from["epochs_trained"]
        steps_trained = int(history[-1].get("steps_trained", 0)) if history else 0
    else:
        initial_val = evaluate(model, [t.val for t in tasks], eval_bs)
        initial_test = evaluate(model, [t.test for t in tasks], eval_bs)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)
    started = time.perf_counter()
    report_is_current = [False]  # whether the last TaskReport still describes the training state
    for t in range(start_task, stop):
        report_is_current[0] = False  # training task t changes what the previous report's checkpoint() sees
        task = tasks[t]
        if config.schedule is not None:  # this task's values; the weights, moments and strategy state go on
            now = config.at_task(t)
            cfg = now.train
            _configure(optimizer, cfg)
            state, strategy = strategy.state_dict(), build_strategy(now.strategy)
            strategy.load_state_dict(state)
        model.head.set_seen_tasks(max(int(model.head.seen_tasks), t + 1))
        if t > 0 and cfg.reset_optimizer:
            optimizer = make_optimizer(model, cfg, device)
        strategy.before_task(model, task)
        trained = range(t + 1) if strategy.trains_on_all_seen_tasks else [t]
        data = Split.concat([tasks[k].train for k in trained]) if len(trained) > 1 else task.train
        idle = model.head.idle_parameters(trained)  # other tasks' heads: no gradient, so no update at all
        n = len(data)
        rounds = passes(n, cfg)
        losses = torch.zeros(len(rounds), max(rounds), device=device)
        penalties = torch.zeros(len(rounds), device=device)  # the penalty's value at the end of each pass
        model.train()
        for epoch, steps in enumerate(rounds):
            order = torch.randperm(n, device=device, generator=batch_order)
            for step in range(steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                # index_select: 3-5x faster than v[idx] for these gathers on CPU
                x, task_ids, y = (v.index_select(0, idx) for v in (data.x, data.task_ids, data.y))
                losses[epoch, step] = train_step(model, strategy, optimizer, x, task_ids, y, idle, autocast)
            with torch.no_grad():
                penalties[epoch] = strategy.penalty(model)
            _check_finite(losses[epoch, :steps], t, epoch)
            epochs_trained += 1
            steps_trained += steps
        strategy.after_task(model, task)

        val_rows.append(evaluate(model, [s.val for s in tasks], eval_bs))
        test_rows.append(evaluate(model, [s.test for s in tasks], eval_bs))
        task_loss, mean_penalty = losses.sum().item() / sum(rounds), penalties.mean().item()
        importance = strategy.importance_norm()
        task_metrics = {
            **{f"val_{k}": v for k, v in M.summary(val_rows, initial_val, val_star, scenario).items()},
            **{f"test_{k}": v for k, v in M.summary(test_rows, initial_test, test_star, scenario).items()},
            "task_loss": task_loss,
            "penalty": mean_penalty,
            "penalty_to_loss_ratio": mean_penalty / task_loss if task_loss > 0 else 0.0,
            "importance_norm": importance if importance is not None else 0.0,
            "tasks_seen": t + 1,
            "epochs_trained": epochs_trained,
            "steps_trained": steps_trained,
        }
        history.append(task_metrics)

        report_is_current = [True]

        def checkpoint(next_task=t + 1, epochs_trained=epochs_trained, current=report_is_current) -> dict:
            if not current[0]:
                raise RuntimeError(f"TaskReport.checkpoint() of task {next_task - 1} was called after training "
                                   f"moved on to task {next_task}; call it inside the callback")
            return {
                "config": config.to_dict(),
                "next_task": next_task,
                "epochs_trained": epochs_trained,
                "model": copy.deepcopy(model.state_dict()),
                "optimizer": copy.deepcopy(optimizer.state_dict()),
                "strategy": copy.deepcopy(strategy.state_dict()),
                "rng": _get_rng_state(batch_order, device),
                "val_matrix": copy.deepcopy(val_rows), "test_matrix": copy.deepcopy(test_rows),
                "initial_val": initial_val, "initial_test": initial_test,
                "history": copy.deepcopy(history),
            }

        report = TaskReport(t, benchmark.n_tasks, task_metrics, copy.deepcopy(val_rows), copy.deepcopy(test_rows),
                            checkpoint)
        for callback in callbacks:
            callback(report)

    return Result(config, val_rows, test_rows, initial_val, initial_test, dict(history[-1]) if history else {},
                  history, str(device), time.perf_counter() - started)


def _configure(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Set the optimiser's hyperparameters to ``cfg``'s, keeping its state (moments, momentum buffers)."""
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.momentum


def passes(n: int, cfg: TrainConfig) -> list[int]:
    """The steps of each pass over a task's ``n`` training samples, each pass a fresh permutation.

    By epochs: ``epochs`` passes of ``ceil(n / batch_size)`` steps (the last batch may be smaller). By
    ``steps_per_task``: passes of ``n // batch_size`` full batches (every step a full batch; a task
    smaller than one batch is one batch), the last pass cut where the steps run out: van de Ven &
    Tolias's iterations per task, their loader dropping the last incomplete batch.
    """
    if cfg.steps_per_task is None:
        return [math.ceil(n / cfg.batch_size)] * cfg.epochs
    per_pass = max(1, n // cfg.batch_size)
    full, rest = divmod(cfg.steps_per_task, per_pass)
    return [per_pass] * full + ([rest] if rest else [])


def _check_finite(losses: torch.Tensor, task: int, epoch: int) -> None:
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0, 0])
        raise TrainingDivergedError(task, epoch, step, float(losses[step]))


def _get_rng_state(batch_order: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "batch_order": batch_order.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, batch_order: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    batch_order.set_state(state["batch_order"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
