"""The training loop: determinism, checkpoint/resume, divergence, callbacks, metrics; real MNIST behaviour."""

from __future__ import annotations

import math

import io
import json

import pytest
import torch

from clcore import metrics as M
from clcore.config import ExperimentConfig
from clcore.data import build_benchmark
from clcore.models import build_model
import clcore.train
from clcore.train import TaskReport, TrainingDivergedError, evaluate, passes, run

from conftest import small_config

# Exercises every piece of state a checkpoint must carry: optimizer momentum across tasks (no reset),
# dropout (the torch RNG), batch order (its own generator), several epochs.
STATEFUL = {"train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "reset_optimizer": False, "epochs": 2,
                      "batch_size": 32, "device": "cpu"},
            "model": {"name": "mlp", "hidden_sizes": [32], "dropout": 0.2}}
# van de Ven & Tolias's way: a fixed number of steps per task, Adam carried across tasks
STEPS_ADAM = {"train": {"optimizer": "adam", "lr": 0.003, "reset_optimizer": False, "steps_per_task": 23,
                        "batch_size": 64, "device": "cpu"}}
CLASS_IL_JOINT_ADAM = {"benchmark": {"name": "synthetic", "scenario": "class", "n_tasks": 5},
                       "strategy": {"name": "joint"},
                       "train": {"optimizer": "adam", "lr": 0.003, "epochs": 1, "batch_size": 64, "device": "cpu"}}


def collect(config, **kwargs):
    """Run; return the result, the checkpoint taken in the callback after every task (by task), and
    the final model's state."""
    checkpoints = {}
    result = run(config, [lambda r: checkpoints.__setitem__(r.task, r.checkpoint())], **kwargs)
    final_model = checkpoints[max(checkpoints)]["model"] if checkpoints else None
    return result, checkpoints, final_model


def assert_same_result(a, b):
    """Equal results; NaN (class-IL's forward transfer) equals NaN here, as JSON writes both alike."""
    for name in ("val_matrix", "test_matrix", "initial_val", "initial_test", "metrics", "history"):
        assert json.dumps(getattr(a, name)) == json.dumps(getattr(b, name)), name


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def through_disk(checkpoint: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # plain tensors and containers: safe loading works


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_accuracy_matrices():
    config = small_config(**STATEFUL)
    a, _, model_a = collect(config)
    b, _, model_b = collect(config)
    assert_same_result(a, b)
    assert_same_state(model_a, model_b)
    c, _, _ = collect(config.with_overrides({"seed": 1}))
    assert c.test_matrix != a.test_matrix


# ------------------------------------------------------------------------------------ checkpoint / resume
@pytest.mark.parametrize("sections, resume_after", [(STATEFUL, 0), (STATEFUL, 2), (STATEFUL, 3),
                                                    (CLASS_IL_JOINT_ADAM, 1), (STEPS_ADAM, 1)],
                         ids=["momentum-dropout-after-0", "after-2", "after-3", "class-il-joint-adam-after-1",
                              "steps-per-task-after-1"])
def test_resume_after_task_k_equals_the_uninterrupted_run(sections, resume_after):
    config = small_config(**sections)
    full, checkpoints, full_model = collect(config)
    saved = through_disk(checkpoints[resume_after])
    assert saved["next_task"] == resume_after + 1 and len(saved["test_matrix"]) == resume_after + 1

    resumed, resumed_checkpoints, resumed_model = collect(config, resume_from=saved)
    assert sorted(resumed_checkpoints) == list(range(resume_after + 1, 5))
    assert_same_result(full, resumed)
    assert_same_state(full_model, resumed_model)
    for counter in ("epochs_trained", "steps_trained"):
        assert resumed.metrics[counter] == full.metrics[counter] > 0, counter


def test_steps_per_task_trains_that_many_full_batches_a_pass_at_a_time(monkeypatch, synthetic):
    """23 steps of 64 per task: every batch full, passes of n // 64 steps, each pass reshuffled."""
    config = small_config(**STEPS_ADAM)
    n = len(build_benchmark(config.benchmark, synthetic).tasks[0].train)
    per_pass = n // 64
    assert 1 < per_pass < 23  # the steps span several passes and end inside one
    batches = []
    real_step = clcore.train.train_step
    monkeypatch.setattr(clcore.train, "train_step", lambda model, strategy, optimizer, x, *rest: (
        batches.append(x.clone()), real_step(model, strategy, optimizer, x, *rest))[1])
    result = run(config, raw=synthetic)
    assert [len(b) for b in batches] == [64] * 5 * 23
    assert [h["steps_trained"] for h in result.history] == [23 * (t + 1) for t in range(5)]
    assert [h["epochs_trained"] for h in result.history] == [-(-23 // per_pass) * (t + 1) for t in range(5)]
    first_pass = torch.cat(batches[:per_pass])  # one pass draws each sample at most once ...
    assert len(torch.unique(first_pass.flatten(1), dim=0)) == len(first_pass)
    assert passes(n, config.train) == [per_pass] * (23 // per_pass) + [23 % per_pass]
    # ... and a task smaller than a batch is one batch per step
    assert passes(10, config.train) == [1] * 23
    assert passes(1000, small_config().train) == [math.ceil(1000 / 32)]  # by epochs: the last batch smaller


def test_a_stale_checkpoint_call_raises_instead_of_mixing_states():
    reports = []
    run(small_config(), [reports.append])
    with pytest.raises(RuntimeError, match="inside the callback"):
        reports[1].checkpoint()
    final = reports[-1].checkpoint()  # the last task's state is still the current one
    assert final["next_task"] == 5 and len(final["val_matrix"]) == 5


def test_checkpoint_is_a_snapshot_and_resuming_does_not_change_it():
    """A checkpoint taken after task 0 stays as it was while training goes on, and resuming from it
    (twice, from the same in-memory dict) neither changes it nor gives a different result."""
    config = small_config(**STATEFUL)
    kept = {}
    run(config, [lambda r: kept.setdefault(r.task, r.checkpoint())])
    checkpoint = kept[0]
    frozen = through_disk(checkpoint)
    first = run(config, resume_from=checkpoint)
    second = run(config, resume_from=checkpoint)
    assert_same_result(first, second)
    assert_same_state(checkpoint["model"], frozen["model"])
    momentum = [s["momentum_buffer"] for s in checkpoint["optimizer"]["state"].values()]
    assert momentum and all(torch.equal(m, f["momentum_buffer"]) for m, f in
                            zip(momentum, frozen["optimizer"]["state"].values()))
    assert checkpoint["val_matrix"] == frozen["val_matrix"] and len(checkpoint["val_matrix"]) == 1


def test_resume_takes_hyperparameters_from_the_config():
    config = small_config(**STATEFUL)
    kept = {}
    run(config, [lambda r: kept.setdefault(r.task, r.checkpoint())])
    slower = config.with_overrides({"train.lr": 0.001})
    resumed = run(slower, resume_from=kept[1])
    uninterrupted_lr = run(config, resume_from=kept[1])
    assert resumed.test_matrix[:2] == uninterrupted_lr.test_matrix[:2]  # rows before the resume point are kept
    assert resumed.test_matrix[2:] != uninterrupted_lr.test_matrix[2:]


# ------------------------------------------------------------------------------------ divergence
def test_diverging_run_raises_naming_task_epoch_and_step():
    config = small_config({"train.lr": 1e12})
    reports = []
    with pytest.raises(TrainingDivergedError) as err:
        run(config, [reports.append])
    e = err.value
    assert (e.task, e.epoch) == (0, 0) and 0 <= e.step < 30  # 30 steps per epoch: 960 samples, batch 32
    message = str(e)
    assert f"task 0, epoch 0, step {e.step}" in message and "train.lr" in message
    assert reports == []  # nothing reported for a task that did not finish


def test_divergence_in_a_later_task_leaves_the_saved_checkpoint_intact(tmp_path):
    config = small_config(**STATEFUL)
    path = tmp_path / "after_task_0.pt"
    two_tasks = config.with_overrides({"benchmark.n_tasks": 2})
    run(two_tasks, [lambda r: r.task == 0 and torch.save(r.checkpoint(), path)])
    before = path.read_bytes()
    checkpoint = torch.load(path, weights_only=True)
    snapshot = through_disk(checkpoint)
    with pytest.raises(TrainingDivergedError) as err:
        run(two_tasks.with_overrides({"train.lr": 1e12}), resume_from=checkpoint)
    assert err.value.task == 1 and "task 1" in str(err.value)
    assert path.read_bytes() == before
    assert_same_state(checkpoint["model"], snapshot["model"])


# ------------------------------------------------------------------------------------ reports and metrics
def test_callbacks_see_every_task_with_growing_matrices_and_metrics():
    config = small_config()
    reports: list[TaskReport] = []
    result = run(config, [reports.append])
    assert [r.task for r in reports] == list(range(5)) and [r.tasks_seen for r in reports] == [1, 2, 3, 4, 5]
    for r in reports:
        assert r.n_tasks == 5 and len(r.val_matrix) == r.tasks_seen and len(r.test_matrix[0]) == 5
        assert r.metrics["tasks_seen"] == r.tasks_seen and r.metrics["epochs_trained"] == r.tasks_seen
        assert r.metrics["val_accuracy_current_task"] == r.val_matrix[-1][r.task]
        assert r.metrics["penalty"] == 0.0 and r.metrics["task_loss"] > 0
    assert result.metrics == reports[-1].metrics and result.history == [r.metrics for r in reports]
    assert result.test_matrix == reports[-1].test_matrix


def test_result_metrics_are_computed_from_its_matrices():
    result = run(small_config())
    for split, R, initial in (("val", result.val_matrix, result.initial_val),
                              ("test", result.test_matrix, result.initial_test)):
        assert result.metrics[f"{split}_average_accuracy"] == M.average_accuracy(R)
        assert result.metrics[f"{split}_forgetting"] == M.forgetting(R)
        assert result.metrics[f"{split}_bwt"] == M.backward_transfer(R)
        assert result.metrics[f"{split}_fwt"] == M.forward_transfer(R, initial)
    assert "val_intransigence" not in result.metrics
    # each task is learned (synthetic data is easy) and task-IL barely forgets
    assert min(result.test_matrix[i][i] for i in range(5)) > 0.9


def test_a_reference_adds_intransigence_and_the_plasticity_ratio_on_each_split():
    reference = M.Reference(val=[1.0, 0.9, 1.0, 0.95, 1.0], test=[0.9, 0.9, 0.8, 0.9, 1.0])
    result = run(small_config(), reference=reference)
    for split, R in (("val", result.val_matrix), ("test", result.test_matrix)):
        a_star = getattr(reference, split)
        assert result.metrics[f"{split}_intransigence"] == M.intransigence(R, a_star)
        assert result.metrics[f"{split}_min_plasticity_ratio"] == M.min_plasticity_ratio(R, a_star)
    assert result.metrics["val_intransigence"] != result.metrics["test_intransigence"]


@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_a_run_on_the_first_tasks_is_the_full_run_stopped_there(scenario, synthetic):
    """What the prefix protocol relies on: training tasks 0..k-1 alone (benchmark.task_range) gives the
    accuracies the full stream's run had on them after k tasks, and never sees the other tasks."""
    full = run(small_config({"benchmark.scenario": scenario}), raw=synthetic)
    prefix = run(small_config({"benchmark.scenario": scenario, "benchmark.task_range": [0, 2]}), raw=synthetic)
    assert len(prefix.val_matrix) == 2 and all(len(row) == 2 for row in prefix.val_matrix + prefix.test_matrix)
    assert prefix.val_matrix == [row[:2] for row in full.val_matrix[:2]]
    assert prefix.test_matrix == [row[:2] for row in full.test_matrix[:2]]


def test_result_is_json_ready_and_run_accepts_a_prebuilt_benchmark(synthetic):
    config = small_config()
    benchmark = build_benchmark(config.benchmark, synthetic, "cpu")
    from_benchmark = run(config, benchmark=benchmark)
    from_raw = run(config, raw=synthetic)
    assert_same_result(from_benchmark, from_raw)
    data = json.loads(json.dumps(from_raw.to_dict()))
    assert data["config"] == config.to_dict() and data["device"] == "cpu"
    assert ExperimentConfig.from_dict(data["config"]) == config


def test_evaluate_restores_the_models_mode_and_handles_an_empty_split(synthetic):
    config = small_config({"benchmark.val_fraction": 0.0})
    benchmark = build_benchmark(config.benchmark, synthetic)
    assert all(len(t.val) == 0 for t in benchmark.tasks)
    result = run(config, benchmark=benchmark)  # an empty validation split is allowed: no accuracy to report
    assert len(result.val_matrix) == 5 and all(math.isnan(a) for row in result.val_matrix for a in row)
    assert math.isnan(result.metrics["val_average_accuracy"]) and 0 < result.metrics["test_average_accuracy"] <= 1
    model = build_model(config.model, input_shape=benchmark.input_shape, scenario="task", n_tasks=5,
                        classes_per_task=2, mean=benchmark.mean, std=benchmark.std)
    model.train()
    accuracy = evaluate(model, [t.test for t in benchmark.tasks], batch_size=7)  # batches that do not divide
    assert model.training and len(accuracy) == 5 and all(0.0 <= a <= 1.0 for a in accuracy)
    assert accuracy == evaluate(model, [t.test for t in benchmark.tasks], batch_size=1000)
    model.eval()
    evaluate(model, [benchmark.tasks[0].test], batch_size=1000)
    assert not model.training


# ------------------------------------------------------------------------------------ real MNIST
MNIST_RUN = {"benchmark": {"name": "split_mnist", "scenario": "class", "n_tasks": 5, "train_samples_per_task": 3000},
             "model": {"name": "mlp", "hidden_sizes": [256]},
             "train": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 32, "eval_batch_size": 2048,
                       "device": "cpu"}}


def _mnist_run(strategy: str, mnist_raw, scenario: str = "class"):
    config = ExperimentConfig.from_dict({**MNIST_RUN, "benchmark": {**MNIST_RUN["benchmark"], "scenario": scenario},
                                         "strategy": {"name": strategy}})
    return run(config, raw=mnist_raw)


def test_naive_on_split_mnist_learns_each_task_and_forgets_in_class_il(mnist_raw):
    result = _mnist_run("naive", mnist_raw)
    R = result.test_matrix
    assert all(R[i][i] > 0.95 for i in range(5)), R  # the task just learned
    assert all(R[4][j] < 0.2 for j in range(4)), R[4]  # earlier classes are overwritten
    assert M.forgetting(R) > 0.5 and result.metrics["test_forgetting"] > 0.5
    assert result.metrics["test_average_accuracy"] < 0.4


def test_joint_on_split_mnist_does_not_forget_in_class_il(mnist_raw):
    result = _mnist_run("joint", mnist_raw)
    R = result.test_matrix
    assert M.forgetting(R) < 0.1, R
    assert min(R[4]) > 0.8 and result.metrics["test_average_accuracy"] > 0.85, R[4]


# ------------------------------------------------------------------------------------ schedules, visible tasks
def lower_triangle(matrix):
    return [row[:i + 1] for i, row in enumerate(matrix)]


@pytest.mark.parametrize("sections", [STATEFUL, {"strategy": {"name": "ewc", "lambda": 50.0}, **STEPS_ADAM}],
                         ids=["sgd-momentum-dropout", "ewc-adam-steps"])
def test_a_schedule_trains_like_a_chain_of_runs_each_seeing_one_task_more(sections, synthetic):
    """What a per_task protocol does: run k sees tasks 0..k alone (benchmark.visible_tasks), continues
    from run k-1's checkpoint with task k's values, and stops; one run with the same values as its
    schedule trains the same weights, and its matrices agree wherever the chain could measure."""
    config = small_config(**sections)
    values = [{"train.lr": lr} for lr in (0.05, 0.02, 0.08, 0.01, 0.03)] if "lambda" not in config.strategy.params else \
        [{"train.lr": lr, "strategy.lambda": lam} for lr, lam in zip((3e-3, 1e-3, 2e-3, 3e-3, 5e-4),
                                                                    (50.0, 500.0, 5.0, 100.0, 1000.0))]
    saved = None
    for k, chosen in enumerate(values):
        step = config.with_overrides({**chosen, "benchmark.visible_tasks": k + 1})
        result, checkpoints, _ = collect(step, resume_from=saved, raw=synthetic)
        assert sorted(checkpoints) == [k]  # the run trained task k alone
        assert all(math.isnan(a) for row in result.val_matrix for a in row[k + 1:])  # later tasks: no data seen
        saved = through_disk(checkpoints[k])
    chain = result
    scheduled, checkpoints, model = collect(config.with_overrides({"schedule": values}), raw=synthetic)
    assert lower_triangle(scheduled.val_matrix) == lower_triangle(chain.val_matrix)
    assert lower_triangle(scheduled.test_matrix) == lower_triangle(chain.test_matrix)
    assert_same_state(model, saved["model"])
    assert not any(math.isnan(a) for row in scheduled.test_matrix for a in row)  # it saw every task
    fixed, _, _ = collect(config.with_overrides(values[0]), raw=synthetic)  # the values did change something
    assert fixed.test_matrix != scheduled.test_matrix
    # a schedule that keeps one value throughout is the unscheduled run
    same, _, _ = collect(config.with_overrides({"schedule": [values[0]] * 5}), raw=synthetic)
    assert_same_result(same, fixed)


def test_visible_tasks_hands_the_run_no_data_of_a_later_task(synthetic):
    config = small_config({"benchmark.visible_tasks": 2, "benchmark.scenario": "class"})
    benchmark = build_benchmark(config.benchmark, synthetic)
    assert benchmark.n_tasks == 5  # the model's shape: every task's units
    assert [len(t.train) > 0 and len(t.val) > 0 and len(t.test) > 0 for t in benchmark.tasks] == [True] * 2 + [False] * 3
    assert all(t.train.x.untyped_storage().size() == 0 for t in benchmark.tasks[2:])  # not even a view of it
    result = run(config, raw=synthetic)
    assert len(result.val_matrix) == 2 and result.metrics["tasks_seen"] == 2


def test_a_bad_schedule_names_the_task_and_the_field():
    from clcore.config import ConfigError

    with pytest.raises(ConfigError, match=r"schedule: needs one mapping per task trained \(5\), got 2"):
        small_config({"schedule": [{}, {}]})
    with pytest.raises(ConfigError, match=r"schedule\[1\]\.model\.hidden_sizes: cannot change between tasks"):
        small_config({"schedule": [{}, {"model.hidden_sizes": [8]}, {}, {}, {}]})
    with pytest.raises(ConfigError, match=r"schedule\[3\]\.train\.lr"):
        small_config({"schedule": [{}, {}, {}, {"train.lr": -1.0}, {}]})
    with pytest.raises(ConfigError, match="benchmark.visible_tasks: must be an integer in 1..n_tasks"):
        small_config({"benchmark.visible_tasks": 6})
