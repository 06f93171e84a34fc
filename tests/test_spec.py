"""Sweep files: the ready ones validate, every file in tests/bad_specs/ is rejected with the message
its first line expects (``# expect: <field>: <text>``), overrides, round trips; no Ray anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.spec import SpecError, SweepSpec, decode_value, encode_value, load_spec

ROOT = Path(__file__).resolve().parents[1]
READY = sorted((ROOT / "search_spaces").glob("*.yaml"))
BAD = sorted((ROOT / "tests" / "bad_specs").glob("*.yaml"))


def small(**sections) -> dict:
    """A valid sweep mapping on the synthetic benchmark; ``sections`` replace whole sections."""
    data = {
        "name": "small",
        "base": {"benchmark": {"name": "synthetic", "scenario": "task", "n_tasks": 5},
                 "model": {"name": "mlp", "hidden_sizes": [32]},
                 "strategy": {"name": "ewc", "mode": "online"},
                 "train": {"optimizer": "sgd", "lr": 0.1, "device": "cpu"}},
        "search": {"strategy.lambda": {"dist": "loguniform", "low": 1.0, "high": 1.0e6},
                   "strategy.decay_factor": {"dist": "uniform", "low": 0.5, "high": 1.0},
                   "train.lr": {"dist": "loguniform", "low": 1e-3, "high": 0.3}},
        "algorithm": {"name": "optuna", "num_samples": 8},
        "scheduler": {"name": "asha", "grace_period": 2},
    }
    data.update(sections)
    return data


# ------------------------------------------------------------------------------ ready files
def test_ready_sweeps_cover_the_benchmarks_the_issue_names():
    names = {p.stem for p in READY}
    assert {"quickstart", "ewc_separate_permuted_mnist", "ewc_online_permuted_mnist", "rwalk_split_cifar100",
            *(f"{s}_split_mnist_{c}" for s in ("ewc", "rwalk") for c in ("task", "domain", "class"))} <= names


@pytest.mark.parametrize("path", READY, ids=lambda p: p.stem)
def test_ready_sweep_validates(path):
    spec = load_spec(path)
    assert spec.name == path.stem  # the storage folder is named after the file
    assert spec.objective.metric.startswith("val_")
    config = spec.example_config()
    seen = config.benchmark.task_range or [0, config.benchmark.n_tasks]  # a prefix protocol's search: its prefix
    assert spec.n_tasks == seen[1] - seen[0]


@pytest.mark.parametrize("path", [p for p in READY if p.stem.startswith("ewc_split_mnist")], ids=lambda p: p.stem)
def test_ewc_split_mnist_lambda_range_spans_published_tunings(path):
    """Published EWC tunings on Split MNIST land anywhere from 1e0 to 1e10."""
    lam = load_spec(path).search["strategy.lambda"]
    assert lam.dist == "loguniform" and lam.low <= 1.0 and lam.high >= 1e10


# ------------------------------------------------------------------------------ bad files
def _expected(path: Path) -> tuple[str, str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode()  # the file itself may be invalid UTF-8
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <field>: <text>'"
    return tuple(first[len("# expect: "):].split(": ", 1))


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_spec_is_rejected_with_file_field_and_reason(path):
    field, text = _expected(path)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    error = caught.value
    assert error.field == field
    assert str(error).startswith(f"{path}: {field}: ")
    assert text in str(error)


def test_every_bad_spec_is_rejected_by_the_cli_before_ray_is_imported(tmp_path):
    """`clsweep run BAD.yaml` exits 2 with the message on stderr, in a process where `import ray` fails."""
    script = (
        "import sys\n"
        "sys.modules['ray'] = None  # any import of ray now raises ImportError\n"
        "from sweeps.cli import main\n"
        "for path in sys.argv[1:]:\n"
        "    assert main(['run', path]) == 2, path\n"
        "assert not [m for m in sys.modules if m.startswith('ray.')]\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *map(str, BAD)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = done.stderr.strip().splitlines()
    for path in BAD:
        field, text = _expected(path)
        assert any(line.startswith(f"clsweep run: error: {path}: {field}: ") for line in errors), path.name


def test_bad_spec_corpus_covers_the_issue_cases():
    stems = {p.stem for p in BAD}
    assert {"unknown_section", "not_a_config_field", "lambda_range_includes_zero", "alpha_above_one",
            "delta_t_fractional", "delta_t_zero", "decay_factor_zero", "decay_factor_above_one",
            "pbt_nothing_mutable", "pbt_mutates_model", "test_objective", "storage_uri", "not_utf8",
            "duplicate_scheduler", "duplicate_nested_key", "fwt_objective_class_il", "amp_without_gpu",
            "momentum_with_adam"} <= stems


# ------------------------------------------------------------------------------ behaviour
def test_defaults_and_normalisation():
    spec = SweepSpec.from_dict(small(objective={"metric": "val_forgetting"}))
    assert spec.objective.mode == "min"  # forgetting: lower is better
    assert spec.scheduler.reduction_factor == 3.0 and spec.scheduler.brackets == 1
    assert spec.algorithm.sampler == "tpe" and spec.algorithm.max_concurrent is None  # the cluster decides
    assert spec.experiment_path == Path("ray_results").resolve() / "small"


def test_an_empty_section_is_its_defaults_and_a_nameless_scheduler_is_fifo():
    spec = SweepSpec.from_dict(small(objective=None, resources=None, storage=None, tracking=None, scheduler=None))
    default = SweepSpec.from_dict({k: v for k, v in small().items() if k != "scheduler"})
    assert spec == default and spec.scheduler.name == "fifo" and spec.tracking.mlflow is False
    assert SweepSpec.from_dict(small(scheduler="asha")).scheduler.grace_period == 1
    with pytest.raises(SpecError, match="scheduler.grace_period: is not a setting of scheduler 'fifo'"):
        SweepSpec.from_dict(small(scheduler={"grace_period": 2}))
    with pytest.raises(SpecError, match=r"description: must be a string, got 3$"):
        SweepSpec.from_dict(small(description=3))


def test_yaml_exponents_and_integer_fields_are_normalised():
    data = small()
    data["search"]["strategy.lambda"] = {"dist": "loguniform", "low": "1e0", "high": "1e10"}  # YAML 1.1 strings
    data["base"]["strategy"] = {"name": "rwalk"}
    data["search"].pop("strategy.decay_factor")
    data["search"]["strategy.delta_t"] = {"dist": "quniform", "low": 5, "high": 50, "q": 5}
    data["search"]["model.hidden_sizes"] = {"dist": "choice", "values": [[32], [64, 64]]}
    spec = SweepSpec.from_dict(data)
    assert spec.search["strategy.lambda"].high == 1e10
    assert (spec.search["strategy.delta_t"].low, spec.search["strategy.delta_t"].q) == (5, 5)
    assert isinstance(spec.search["strategy.delta_t"].low, int)
    encoded = encode_value([64, 64])
    assert encoded == "[64, 64]" and decode_value("model.hidden_sizes", encoded) == [64, 64]
    config = spec.trial_config({"strategy.lambda": 10.0, "strategy.delta_t": 15, "train.lr": 0.01,
                                "model.hidden_sizes": encoded, "not.searched": 1})
    assert config.model.hidden_sizes == [64, 64] and config.strategy.delta_t == 15 and config.train.lr == 0.01


def test_overrides_reach_every_part_of_a_sweep():
    spec = SweepSpec.from_dict(small(), overrides=[
        "algorithm.num_samples=3", "scheduler=fifo", "train.lr=0.05", "search.strategy.lambda.high=1e4",
        "base.train.epochs=2", "name=other", "resources.cpu=0.5"])
    assert spec.algorithm.num_samples == 3 and spec.scheduler.name == "fifo"
    assert "train.lr" not in spec.search and spec.base["train"]["lr"] == 0.05  # fixed, no longer searched
    assert spec.search["strategy.lambda"].high == 1e4
    assert spec.example_config().train.epochs == 2 and spec.name == "other" and spec.resources.cpu == 0.5


def test_fixing_a_searched_field_drops_it_from_the_points_to_evaluate():
    points = [{"strategy.lambda": 100.0, "train.lr": 0.01}, {"train.lr": 0.1}]
    spec = SweepSpec.from_dict(small(algorithm={"name": "optuna", "num_samples": 8, "points_to_evaluate": points}),
                               overrides=["train.lr=0.001"])
    assert "train.lr" not in spec.search and spec.example_config().train.lr == 0.001
    assert spec.algorithm.points_to_evaluate == [{"strategy.lambda": 100.0}]
    spec = SweepSpec.from_dict(small(algorithm={"name": "optuna", "num_samples": 8, "points_to_evaluate": points}),
                               overrides=["train.lr=0.001", "strategy.lambda=10"])
    assert spec.algorithm.points_to_evaluate is None


def test_requirements_are_checked_after_every_task_on_the_validation_matrix():
    spec = SweepSpec.from_dict(small(objective={"metric": "val_forgetting", "require": {
        "val_min_accuracy_current_task": ">= 0.9", "val_average_accuracy": "> 0.5"}}))
    assert [str(r) for r in spec.objective.requirements()] == ["val_min_accuracy_current_task >= 0.9",
                                                               "val_average_accuracy > 0.5"]
    kept = [[0.95, 0.1], [0.93, 0.91]]
    late = [[0.95, 0.1], [0.30, 0.91]]  # forgot task 0: average 0.605 still > 0.5, every task learned
    stuck = [[0.95, 0.1], [0.95, 0.55], [0.9, 0.5, 0.97]]  # task 1 never learned; task 2 fine again
    assert spec.objective.broken(kept) is None and spec.objective.broken(late) is None
    assert spec.objective.broken(stuck) == "val_min_accuracy_current_task >= 0.9, broken after task 2: 0.5500"
    assert spec.objective.ranked(0.1, kept) == 0.1  # forgetting: min, so a broken trial is moved up by 2
    assert spec.objective.ranked(0.1, stuck) == 2.1
    assert SweepSpec.from_dict(small()).objective.broken(stuck) is None  # nothing required


def test_finalists_need_an_unsearched_seed_and_enough_trials():
    assert SweepSpec.from_dict(small(selection={"finalists": 3})).selection.fresh_seeds(0) == [1, 2, 3]
    data = small(selection={"finalists": 2})
    data["search"]["seed"] = {"dist": "choice", "values": [0, 1]}
    with pytest.raises(SpecError, match="search.seed: finalists train again on fresh seeds"):
        SweepSpec.from_dict(data)
    with pytest.raises(SpecError, match=r"selection.finalists: 9 finalists from 8 trials; allowed: 0..8"):
        SweepSpec.from_dict(small(selection={"finalists": 9}))
    assert SweepSpec.from_dict(small(selection={"finalists": 2})).selected_on == "finalists_val_average_accuracy"


def conditional(**sections) -> dict:
    """EWC's mode searched, and online EWC's decay_factor with it: a conditional space."""
    data = small(**sections)
    data["base"]["strategy"] = {"name": "ewc", "mode": "separate"}
    data["search"]["strategy.mode"] = {"dist": "choice", "values": ["separate", "online"]}
    return data


def test_a_parameter_that_exists_under_one_choice_is_searched_only_there():
    spec = SweepSpec.from_dict(conditional())
    assert spec.conditions() == {"strategy.decay_factor": ("strategy.mode", "online")}  # from EWC's declaration
    drawn = {"strategy.lambda": 3.0, "strategy.decay_factor": 0.7, "train.lr": 0.01}
    assert spec.trial_config({**drawn, "strategy.mode": "online"}).strategy.decay_factor == 0.7
    separate = spec.trial_config({**drawn, "strategy.mode": "separate"})  # drawn, but it does not exist there
    assert separate.strategy.mode == "separate" and separate.strategy.decay_factor is None
    assert spec.example_config().strategy.mode == "separate"
    with pytest.raises(SpecError, match="search.strategy.decay_factor: .* only applies to mode 'online'"):
        data = conditional()
        data["search"]["strategy.mode"] = {"dist": "choice", "values": ["separate"]}  # never online: an error
        SweepSpec.from_dict(data)
    grid = conditional(algorithm={"name": "random", "num_samples": 2})
    grid["search"]["strategy.decay_factor"] = {"dist": "grid", "values": [0.5, 0.9]}
    with pytest.raises(SpecError, match="search.strategy.decay_factor: exists only when strategy.mode is 'online': "
                                        "a grid over it would repeat the trials where it does not"):
        SweepSpec.from_dict(grid)


def test_optuna_asks_for_a_conditional_key_only_when_its_condition_holds():
    import optuna

    from sweeps import space

    spec = SweepSpec.from_dict(conditional())
    assert space.uses_define_by_run(spec) and space.param_space(spec) == {}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    modes = set()
    for _ in range(12):
        trial = study.ask()
        space.define_by_run(spec)(trial)
        modes.add(trial.params["strategy.mode"])
        assert ("strategy.decay_factor" in trial.params) == (trial.params["strategy.mode"] == "online")
        assert 0.5 <= trial.params.get("strategy.decay_factor", 0.5) <= 1.0
        assert 1.0 <= trial.params["strategy.lambda"] <= 1e6
        spec.trial_config(trial.params)  # a valid config either way
    assert modes == {"separate", "online"}
    assert not space.uses_define_by_run(SweepSpec.from_dict(small()))  # nothing conditional: Ray's own conversion


def test_override_errors_name_the_key():
    with pytest.raises(SpecError, match=r"<dict>: sheduler.name: is neither a sweep setting nor a config field"):
        SweepSpec.from_dict(small(), overrides=["sheduler.name=fifo"])
    with pytest.raises(SpecError, match=r"must look like key=value"):
        SweepSpec.from_dict(small(), overrides=["algorithm.num_samples"])
    with pytest.raises(SpecError, match=r"search.strategy.lambda: uniform bound low=-1.0 is not a valid"):
        SweepSpec.from_dict(small(), overrides=["search.strategy.lambda={dist: uniform, low: -1, high: 1}"])


def test_round_trip(tmp_path):
    spec = SweepSpec.from_dict(small(algorithm={"name": "optuna", "num_samples": 8, "max_concurrent": None,
                                                "points_to_evaluate": [{"strategy.lambda": 100}]}))
    path = tmp_path / "sweep.yaml"
    spec.to_yaml(path)
    again = load_spec(path)
    assert again == spec
    assert again.algorithm.max_concurrent is None
    assert again.algorithm.points_to_evaluate == [{"strategy.lambda": 100.0}]


def test_pbt_mutates_every_mutable_key_by_default():
    data = small(algorithm={"name": "random", "num_samples": 4}, scheduler={"name": "pbt"})
    data["search"]["model.hidden_sizes"] = {"dist": "choice", "values": [[32], [64]]}
    spec = SweepSpec.from_dict(data)
    assert spec.scheduler.mutate == ["strategy.lambda", "strategy.decay_factor", "train.lr"]


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such sweep file"):
        load_spec(tmp_path / "nope.yaml")


def test_dry_run_prints_the_resolved_sweep(tmp_path, capsys):
    from sweeps.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small()))
    assert main(["run", str(path), "--dry-run", "--set", "algorithm.num_samples=2"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["algorithm"]["num_samples"] == 2
    assert "# valid" in out
