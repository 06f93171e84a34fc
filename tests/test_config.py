"""ExperimentConfig: exact YAML round trip, dotted --set overrides, and bad input rejected before training."""

from __future__ import annotations

from pathlib import Path

import pytest

import clcore
from clcore.config import ConfigError, ExperimentConfig, parse_override

from conftest import small_config

FULL_EWC = {
    "benchmark": {"name": "split_cifar100", "scenario": "class", "n_tasks": 10, "seed": 3, "class_order": None,
                  "shuffle_classes": True, "val_fraction": 0.2, "train_samples_per_task": 500, "rotations": None,
                  "normalize": False,
                  "task_range": [2, 7], "visible_tasks": None,
                  "data_dir": "~/datasets", "download": True},
    "model": {"name": "resnet18", "hidden_sizes": [128], "dropout": 0.25, "head": "incremental"},
    "strategy": {"name": "ewc", "lambda": 1234.5, "mode": "online", "decay_factor": 0.95, "fisher": "sampled",
                 "fisher_samples": 600, "fisher_batch_size": 64, "keep_importance_data": True},
    "train": {"optimizer": "adam", "lr": 0.00031, "momentum": 0.0, "weight_decay": 1e-05, "epochs": 3,
              "steps_per_task": None,
              "batch_size": 10, "eval_batch_size": 500, "reset_optimizer": False, "device": "cuda:1", "amp": True},
    "seed": 17,
}
ROTATED_RWALK = {
    "benchmark": {"name": "rotated_mnist", "scenario": "domain", "n_tasks": 3, "rotations": [0.0, 33.3, 271.5]},
    "strategy": {"name": "rwalk", "lambda": 0.1, "alpha": 0.5, "delta_t": 7},
}


# ------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("data", [{}, FULL_EWC, ROTATED_RWALK, {"strategy": {"name": "joint"}}],
                         ids=["defaults", "ewc-all-fields", "rotated-rwalk", "joint"])
def test_yaml_round_trip_is_exact(data, tmp_path):
    config = ExperimentConfig.from_dict(data)
    text = config.to_yaml()
    again = ExperimentConfig.from_yaml(text)
    assert again == config
    assert again.to_dict() == config.to_dict()
    assert again.to_yaml() == text
    # and through a file
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    assert ExperimentConfig.from_yaml(path) == config
    assert ExperimentConfig.from_yaml(str(path)) == config


def test_round_trip_keeps_every_explicit_value():
    config = ExperimentConfig.from_dict(FULL_EWC)
    assert config.to_dict() == FULL_EWC
    assert config.strategy.lambda_ == 1234.5 and isinstance(config.train.lr, float)


def test_defaults_fill_strategy_parameters_and_omit_foreign_ones():
    ewc = ExperimentConfig.from_dict({"strategy": {"name": "ewc"}}).to_dict()["strategy"]
    assert ewc == {"name": "ewc", "lambda": 1.0, "mode": "separate", "decay_factor": None, "fisher": "empirical",
                   "fisher_samples": None, "fisher_batch_size": 256, "keep_importance_data": False}
    assert ExperimentConfig.from_dict({}).to_dict()["strategy"] == {"name": "naive"}


def test_yaml_scientific_notation_reads_as_float():
    # YAML 1.1 reads "1e-3" (no dot) as a string; the config coerces it.
    config = ExperimentConfig.from_yaml("train:\n  lr: 1e-3\nstrategy:\n  name: ewc\n  lambda: 5e2\n")
    assert config.train.lr == 0.001 and config.strategy.lambda_ == 500.0


# ------------------------------------------------------------------------------------ overrides
def test_parse_override_reads_values_as_yaml():
    assert parse_override("train.lr=0.1") == ("train.lr", 0.1)
    assert parse_override("train.lr=1e-3") == ("train.lr", "1e-3")  # coerced to float by the config
    assert parse_override("benchmark.class_order=[1, 0, 2]") == ("benchmark.class_order", [1, 0, 2])
    assert parse_override("benchmark.data_dir=null") == ("benchmark.data_dir", None)
    assert parse_override("train.amp=true") == ("train.amp", True)
    assert parse_override(" strategy.name = ewc") == ("strategy.name", "ewc")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")


def test_with_overrides_sets_dotted_paths_and_returns_a_new_config():
    base = ExperimentConfig.from_dict({})
    config = base.with_overrides(dict(parse_override(o) for o in (
        "train.lr=1e-3", "train.epochs=4", "benchmark.name=split_fashion_mnist", "strategy.name=ewc",
        "strategy.lambda=250", "seed=9")))
    assert (config.train.lr, config.train.epochs, config.benchmark.name) == (0.001, 4, "split_fashion_mnist")
    strategy = config.strategy
    assert (strategy.name, strategy.lambda_, strategy.mode, config.seed) == ("ewc", 250.0, "separate", 9)
    assert base == ExperimentConfig.from_dict({})  # untouched
    assert config.flat()["strategy.lambda"] == 250.0 and config.flat()["train.lr"] == 0.001


def test_override_switching_strategy_starts_its_parameters_afresh():
    ewc = ExperimentConfig.from_dict({"strategy": {"name": "ewc", "lambda": 10.0, "mode": "online",
                                                   "decay_factor": 0.5}})
    assert ewc.with_overrides({"strategy.name": "naive"}).to_dict()["strategy"] == {"name": "naive"}
    rwalk = ewc.with_overrides({"strategy.name": "rwalk", "strategy.alpha": 0.3})
    assert rwalk.to_dict()["strategy"] == {"name": "rwalk", "lambda": 1.0, "alpha": 0.3, "delta_t": 10,
                                           "fisher_every": 1, "score_clip": "average"}
    # a parameter set explicitly that the new strategy does not take is still an error
    with pytest.raises(ConfigError) as err:
        ewc.with_overrides({"strategy.name": "joint", "strategy.mode": "online"})
    assert err.value.field == "strategy.mode"
    # the same strategy name keeps its parameters
    assert ewc.with_overrides({"strategy.name": "ewc"}) == ewc


def test_override_errors_name_the_field():
    config = ExperimentConfig.from_dict({})
    with pytest.raises(ConfigError) as err:
        config.with_overrides({"train.learning_rate": 0.1})
    assert err.value.field == "train.learning_rate" and "train.lr" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config.with_overrides({"train.epochs": 0})
    assert err.value.field == "train.epochs"
    with pytest.raises(ConfigError) as err:
        config.with_overrides({"train.batch_size": "big"})
    assert err.value.field == "train.batch_size" and "integer" in str(err.value)


# ------------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    # (case id, config dict, field, words the message must contain: the allowed values)
    ("unknown-benchmark", {"benchmark": {"name": "imagenet"}}, "benchmark.name",
     ["imagenet", "permuted_mnist", "split_mnist", "split_cifar100", "synthetic"]),
    ("unknown-model", {"model": {"name": "vgg16"}}, "model.name", ["vgg16", "mlp", "cnn", "resnet18"]),
    ("unknown-strategy", {"strategy": {"name": "lwf"}}, "strategy.name", ["lwf", "naive", "joint", "ewc", "rwalk", "si"]),
    ("unknown-scenario", {"benchmark": {"scenario": "online"}}, "benchmark.scenario", ["task", "domain", "class"]),
    ("too-many-tasks-mnist", {"benchmark": {"name": "split_mnist", "n_tasks": 10}}, "benchmark.n_tasks",
     ["10 classes", "[1, 2, 5]", "got 10"]),
    ("too-many-tasks-cifar100", {"benchmark": {"name": "split_cifar100", "n_tasks": 100}}, "benchmark.n_tasks",
     ["100 classes", "50]", "got 100"]),
    ("uneven-tasks", {"benchmark": {"name": "split_cifar10", "n_tasks": 3}}, "benchmark.n_tasks", ["[1, 2, 5]"]),
    ("zero-tasks", {"benchmark": {"n_tasks": 0}}, "benchmark.n_tasks", [">= 1"]),
    ("task-il-on-domain-benchmark", {"benchmark": {"name": "permuted_mnist", "scenario": "task"}},
     "benchmark.scenario", ["permuted_mnist", "domain, class"]),
    ("task-il-on-rotated", {"benchmark": {"name": "rotated_mnist", "scenario": "task"}},
     "benchmark.scenario", ["rotated_mnist", "domain, class"]),
    ("multi-head-on-domain-il", {"benchmark": {"name": "permuted_mnist", "scenario": "domain"},
                                 "model": {"head": "multi"}}, "model.head", ["'multi'", "'auto'", "'single'"]),
    ("single-head-on-class-il", {"benchmark": {"scenario": "class"}, "model": {"head": "single"}},
     "model.head", ["'auto'", "'incremental'"]),
    ("zero-epochs", {"train": {"epochs": 0}}, "train.epochs", ["integer >= 1", "got 0"]),
    ("negative-epochs", {"train": {"epochs": -2}}, "train.epochs", ["integer >= 1", "got -2"]),
    ("zero-batch-size", {"train": {"batch_size": 0}}, "train.batch_size", ["integer >= 1", "got 0"]),
    ("negative-batch-size", {"train": {"batch_size": -64}}, "train.batch_size", ["integer >= 1"]),
    ("zero-eval-batch-size", {"train": {"eval_batch_size": 0}}, "train.eval_batch_size", ["integer >= 1"]),
    ("zero-lr", {"train": {"lr": 0}}, "train.lr", ["> 0", "got 0.0"]),
    ("negative-lr", {"train": {"lr": -0.01}}, "train.lr", ["> 0", "got -0.01"]),
    ("nan-lr", {"train": {"lr": float("nan")}}, "train.lr", ["finite", "> 0"]),
    ("infinite-lr", {"train": {"lr": float("inf")}}, "train.lr", ["finite", "> 0"]),
    ("missing-data-root", {"benchmark": {"data_dir": "/no/such/clcore/dir", "download": False}},
     "benchmark.data_dir", ["/no/such/clcore/dir", "does not exist", "existing directory", "download: true"]),
    ("unknown-key", {"train": {"learning_rate": 0.1}}, "train.learning_rate", ["lr", "epochs", "batch_size"]),
    ("wrong-type", {"train": {"epochs": "three"}}, "train.epochs", ["integer", "'three'"]),
    ("fractional-int", {"train": {"epochs": 1.5}}, "train.epochs", ["integer"]),
    ("bool-is-not-int", {"benchmark": {"n_tasks": True}}, "benchmark.n_tasks", ["integer"]),
    ("foreign-strategy-param", {"strategy": {"name": "naive", "lambda": 1.0}}, "strategy.lambda",
     ["naive", "none"]),
    ("ewc-lambda-zero", {"strategy": {"name": "ewc", "lambda": 0}}, "strategy.lambda", ["> 0"]),
    ("ewc-unknown-mode", {"strategy": {"name": "ewc", "mode": "both"}}, "strategy.mode", ["separate", "online"]),
    ("ewc-unknown-fisher", {"strategy": {"name": "ewc", "fisher": "kfac"}}, "strategy.fisher",
     ["exact", "empirical", "predicted", "batched", "batched_by_class_predicted"]),
    ("steps-and-epochs", {"train": {"steps_per_task": 100, "epochs": 2}}, "train.epochs",
     ["steps_per_task (100) replaces train.epochs", "1 with steps_per_task"]),
    ("steps-zero", {"train": {"steps_per_task": 0}}, "train.steps_per_task", [">= 1", "null"]),
    ("rwalk-alpha", {"strategy": {"name": "rwalk", "alpha": 1.5}}, "strategy.alpha", ["[0, 1]"]),
    ("unknown-optimizer", {"train": {"optimizer": "lbfgs"}}, "train.optimizer", ["sgd", "adam"]),
    ("unknown-device", {"train": {"device": "tpu"}}, "train.device", ["auto", "cpu", "cuda"]),
    ("val-fraction", {"benchmark": {"val_fraction": 1.0}}, "benchmark.val_fraction", ["[0, 1)"]),
    ("rotations-count", {"benchmark": {"name": "rotated_mnist", "scenario": "domain", "n_tasks": 3,
                                       "rotations": [0.0, 90.0]}}, "benchmark.rotations", ["3"]),
    ("class-order", {"benchmark": {"class_order": [0, 1, 2]}}, "benchmark.class_order", ["0..9"]),
    ("momentum-with-adam", {"train": {"optimizer": "adam", "momentum": 0.9}}, "train.momentum",
     ["SGD's momentum", "'adam'", "allowed: 0 with adam, or optimizer sgd"]),
    ("amp-on-cpu", {"train": {"amp": True, "device": "cpu"}}, "train.amp", ["CUDA only", "false with device cpu"]),
    ("rwalk-score-clip", {"strategy": {"name": "rwalk", "score_clip": "relu"}}, "strategy.score_clip",
     ["average", "interval"]),
]


@pytest.mark.parametrize("data, field, words", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_rejected_naming_field_and_allowed_values(data, field, words):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(data)
    assert err.value.field == field
    message = str(err.value)
    assert message.startswith(field + ":")
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_yaml_that_is_not_a_mapping_is_rejected():
    with pytest.raises(ConfigError, match="mapping"):
        ExperimentConfig.from_yaml("- just\n- a list\n")


def test_run_rejects_a_bad_config_before_loading_data_or_training(tmp_path):
    """A config mutated after construction (as a sweep might) is validated again by run()."""
    config = small_config()
    config.train.epochs = 0
    config.benchmark.name = "split_cifar10"  # would need data: validation must come first
    config.benchmark.data_dir = str(tmp_path / "absent")  # download is on: the root would be created
    reports = []
    with pytest.raises(ConfigError) as err:
        clcore.run(config, [reports.append])
    assert err.value.field == "train.epochs"
    assert reports == [] and not (tmp_path / "absent").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_amp_with_device_auto_is_rejected_by_run_on_a_machine_without_cuda():
    config = small_config({"train.amp": True, "train.device": "auto"})  # valid: auto may find a GPU
    with pytest.raises(ConfigError) as err:
        clcore.run(config)
    assert err.value.field == "train.amp" and "'cpu'" in str(err.value)


def test_yaml_files_with_repeated_keys_or_bad_bytes_are_rejected(tmp_path):
    from clcore.config import YamlFileError

    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.5\n")
    with pytest.raises(YamlFileError) as err:
        ExperimentConfig.from_yaml(twice)
    assert err.value.field == "train.lr" and "lines 2 and 4" in str(err.value) and err.value.line == 4
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"seed: 0\n# caf\xe9\n")
    with pytest.raises(YamlFileError) as err:
        ExperimentConfig.from_yaml(latin)
    assert err.value.field == "<file>" and "byte 0xe9 at offset 13 (line 2)" in str(err.value)
    merged = tmp_path / "merged.yaml"  # a merge key's values may be overridden: that is not a repeat
    merged.write_text("x-train: &t {lr: 0.1, epochs: 2}\ntrain: {<<: *t, lr: 0.5}\n")
    from clcore.config import read_yaml_file

    assert read_yaml_file(merged)["train"] == {"lr": 0.5, "epochs": 2}


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "reproduce").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_reproductions_train_on_every_training_image_as_the_baselines_do(path):
    """continual-learning-baselines carve no validation split (60,000 images per Permuted MNIST task)."""
    assert ExperimentConfig.from_yaml(path).benchmark.val_fraction == 0.0
