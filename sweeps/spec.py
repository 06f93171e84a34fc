"""SweepSpec: one YAML sweep file as a validated, typed object. No Ray import here.

A sweep file says everything about a sweep::

    name: ewc_split_mnist_task            # names the storage folder (and the MLflow experiment)
    description: EWC on Split MNIST       # optional
    base:                                 # an ExperimentConfig, as `clsweep train` reads it
      benchmark: {name: split_mnist, scenario: task, n_tasks: 5}
      strategy: {name: ewc, mode: separate}
      train: {lr: 0.01, epochs: 1}
    search:                               # dotted config path -> distribution
      strategy.lambda: {dist: loguniform, low: 1.0, high: 1.0e+10}
      train.lr: {dist: loguniform, low: 1.0e-3, high: 0.3}
    objective: {metric: val_average_accuracy, mode: max}      # a validation metric, never test
    algorithm: {name: optuna, num_samples: 32, max_concurrent: 4, seed: 0,
                points_to_evaluate: [{strategy.lambda: 100.0, train.lr: 0.01}]}
    scheduler: {name: asha, grace_period: 2, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}           # per trial; fractions allowed
    storage: {path: ./ray_results}        # checkpoints_to_keep: 2 per trial (pbt: null, all)
    max_failures: 1                       # retries of a crashed trial, from its last task checkpoint
    tracking: {mlflow: false, tracking_uri: null}

Distributions (``dist``): ``loguniform``/``uniform`` (low, high), ``quniform``/``qloguniform``
(low, high, q: values are multiples of q), ``randint`` (low, high: integers, both inclusive),
``choice`` and ``grid`` (values). ``grid`` takes every value (algorithm ``grid`` or ``random``);
the others are sampled. The scheduler's time axis is tasks seen, and a trial is complete after
``benchmark.n_tasks`` tasks. ``pbt`` is synchronous (trials are compared and exploited only once
all have finished the same task) and mutates ``scheduler.mutate`` (default: every searched field
``clcore.config.mutable_paths()``).

`load_spec` validates everything before Ray starts, and every problem is a `SpecError` that
reads ``<file>: <field>: <problem>; allowed: ...``. A distribution is checked against the field
it searches: each bound (or value) is applied to the base config, so ExperimentConfig's own
rules decide (lambda > 0, alpha in [0, 1], delta_t an integer >= 1, decay_factor in (0, 1], a
parameter the strategy does not have, ...). Spaces are not conditional: every value of every
distribution must make a valid config with the first value of all the others.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from clcore.config import (ConfigError, ExperimentConfig, YamlFileError, build_typed, config_paths, mutable_paths,
                           parse_override, read_yaml_file, set_path)
from clcore.params import RuleError
from clcore.metrics import UNMEASURABLE


class SpecError(ConfigError):
    """A sweep file is wrong. ``file`` is the sweep file, ``field`` the dotted path inside it."""

    def __init__(self, file: str, field_path: str, problem: str, allowed: Optional[str] = None):
        message = problem if allowed is None else f"{problem}; allowed: {allowed}"
        super().__init__(field_path, message)
        self.file = file

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"

    def __reduce__(self):
        return type(self), (self.file, self.field, self.message)


DISTRIBUTIONS = {  # dist -> its settings
    "loguniform": ("low", "high"),
    "uniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "qloguniform": ("low", "high", "q"),
    "randint": ("low", "high"),
    "choice": ("values",),
    "grid": ("values",),
}
# Objective metrics (clcore reports them after every task) and the direction that is better.
OBJECTIVES = {
    "val_average_accuracy": "max",
    "val_forgetting": "min",
    "val_bwt": "max",
    "val_fwt": "max",
    "val_accuracy_current_task": "max",
}
ALGORITHMS = ("optuna", "random", "grid")
SAMPLERS = ("tpe", "random")
# Scheduler -> its settings and their defaults (None: every search key, for pbt's ``mutate``).
SCHEDULERS = {
    "fifo": {},
    "asha": {"grace_period": 1, "reduction_factor": 3.0, "brackets": 1},
    "hyperband": {"reduction_factor": 3.0},
    "median": {"grace_period": 1, "min_samples_required": 3},
    "pbt": {"perturbation_interval": 1, "burn_in_period": 0, "quantile_fraction": 0.25,
            "resample_probability": 0.25, "mutate": None},
}
# Fields a sweep cannot search: the dataset is loaded once per sweep and shared by its trials, and
# benchmark.n_tasks is the schedulers' time axis.
NOT_SEARCHABLE = ("benchmark.name", "benchmark.data_dir", "benchmark.download", "benchmark.n_tasks")
SECTIONS = ("name", "description", "base", "search", "objective", "algorithm", "scheduler", "resources",
            "storage", "max_failures", "tracking")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # s3://, gs://, file://, hdfs://: not a directory path

# ------------------------------------------------------------------------------ sections
@dataclass
class Distribution:
    dist: str
    low: Optional[float] = None
    high: Optional[float] = None
    q: Optional[float] = None
    values: Optional[list] = None

    @property
    def discrete(self) -> bool:
        return self.dist in ("choice", "grid")

    def candidates(self) -> list:
        """The values that must make a valid config: the bounds, or every value."""
        return list(self.values) if self.discrete else [self.low, self.high]

    def contains(self, value) -> bool:
        if self.discrete:
            return value in self.values
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self, value) -> str:
        if self.discrete:
            return f"value {value!r}"
        return f"{self.dist} bound {'low' if value == self.low else 'high'}={value!r}"

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Objective:
    metric: str = "val_average_accuracy"
    mode: Optional[str] = None  # default: the metric's better direction


@dataclass
class Algorithm:
    name: str = "optuna"
    num_samples: Optional[int] = None  # trials (grid: repeats of the grid, default 1)
    max_concurrent: Optional[int] = 4  # null: as many as the cluster's resources allow
    seed: Optional[int] = 0
    sampler: Optional[str] = None  # optuna only: tpe (default) | random
    n_startup_trials: Optional[int] = None  # optuna's tpe only: random trials before TPE starts
    points_to_evaluate: Optional[list] = None  # first trials, e.g. [{strategy.lambda: 100.0}]


@dataclass
class Scheduler:
    """Settings in ``SCHEDULERS[name]``; the time unit is tasks seen."""

    name: str = "fifo"
    grace_period: Optional[int] = None
    reduction_factor: Optional[float] = None
    brackets: Optional[int] = None
    min_samples_required: Optional[int] = None
    perturbation_interval: Optional[int] = None
    burn_in_period: Optional[int] = None
    quantile_fraction: Optional[float] = None
    resample_probability: Optional[float] = None
    mutate: Optional[list[str]] = None

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in SCHEDULERS.get(self.name, {})}


@dataclass
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass
class Storage:
    path: str = "ray_results"  # a local or shared directory; relative paths start at the working directory
    checkpoints_to_keep: Optional[int] = None  # per trial; default 2; pbt keeps all (null)


@dataclass
class TrackingSpec:
    mlflow: bool = False
    tracking_uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else the tracking layer's default


# ------------------------------------------------------------------------------ the spec
@dataclass
class SweepSpec:
    name: str
    base: dict  # the ExperimentConfig mapping as written (searched fields may be absent)
    search: dict[str, Distribution]
    objective: Objective = field(default_factory=Objective)
    algorithm: Algorithm = field(default_factory=Algorithm)
    scheduler: Scheduler = field(default_factory=Scheduler)
    resources: Resources = field(default_factory=Resources)
    storage: Storage = field(default_factory=Storage)
    max_failures: int = 1
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    description: Optional[str] = None
    source: str = field(default="<dict>", compare=False)  # the file, for messages

    # -------------------------------------------------------------- trials
    def trial_config(self, params: dict[str, Any]) -> ExperimentConfig:
        """The validated ExperimentConfig of a trial whose searched values are ``params``.

        ``params`` is a trial's Ray config (search keys to values, list values encoded as strings);
        keys that are not search keys are ignored.
        """
        return ExperimentConfig.from_dict(_merged(self.base, {
            key: decode_value(key, value) for key, value in params.items() if key in self.search}))

    def example_config(self) -> ExperimentConfig:
        """The config with every searched field at its first value (what the sweep's data comes from)."""
        return self.trial_config({k: encode_value(d.candidates()[0]) for k, d in self.search.items()})

    @property
    def n_tasks(self) -> int:
        return self.example_config().benchmark.n_tasks

    @property
    def mode(self) -> str:
        return self.objective.mode

    @property
    def experiment_path(self) -> Path:
        """Where Ray keeps this sweep: ``<storage.path>/<name>``, absolute."""
        return Path(self.storage.path).expanduser().resolve() / self.name

    # -------------------------------------------------------------- I/O
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Optional[list[str] | dict[str, Any]] = None) -> "SweepSpec":
        source = str(path)
        try:
            data = read_yaml_file(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{source}: no such sweep file") from None
        except YamlFileError as error:
            raise SpecError(source, error.field, error.message) from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise SpecError(source, "<file>", f"not valid YAML: {getattr(error, 'problem', None) or error}{where}",
                            "a YAML mapping") from None
        return cls.from_dict(data, source=source, overrides=overrides)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<dict>",
                  overrides: Optional[list[str] | dict[str, Any]] = None) -> "SweepSpec":
        """Build and validate a spec; ``overrides`` are ``--set`` pairs (``["train.lr=0.1"]`` or a dict)."""
        if not isinstance(data, dict):
            raise SpecError(source, "<file>", "a sweep file must be a YAML mapping", ", ".join(SECTIONS))
        data = copy.deepcopy(data)
        pairs = overrides.items() if isinstance(overrides, dict) else (_parse(source, o) for o in overrides or ())
        for key, value in pairs:
            apply_override(data, key, value, source)
        return _Validator(source).spec(data)

    def to_dict(self) -> dict:
        """The spec as a YAML-ready mapping; `from_dict` of it gives an equal spec."""
        out = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out["base"] = copy.deepcopy(self.base)
        out["search"] = {k: d.to_dict() for k, d in self.search.items()}
        out["objective"] = dataclasses.asdict(self.objective)
        out["algorithm"] = dataclasses.asdict(self.algorithm)
        out["scheduler"] = {"name": self.scheduler.name, **self.scheduler.settings()}
        for name in ("resources", "storage"):
            out[name] = dataclasses.asdict(getattr(self, name))
        out["max_failures"] = self.max_failures
        out["tracking"] = dataclasses.asdict(self.tracking)
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def load_spec(path: str | Path, overrides: Optional[list[str] | dict[str, Any]] = None) -> SweepSpec:
    """Read and validate a sweep file (``overrides``: ``--set key=value`` pairs)."""
    return SweepSpec.from_yaml(path, overrides)


# ------------------------------------------------------------------------------ values
def encode_value(value):
    """Search values as Ray and Optuna see them: lists (e.g. hidden sizes) become YAML strings."""
    return yaml.safe_dump(value, default_flow_style=True).strip() if isinstance(value, list) else value


def decode_value(key: str, value):
    """The inverse of `encode_value` for the config field ``key``."""
    if isinstance(value, str) and key in config_paths() and field_kind(key) == "list":
        return yaml.safe_load(value)
    return value


def field_kind(path: str) -> str:
    """int | float | bool | str | list: what the config field ``path`` holds."""
    hint = config_paths()[path]
    if typing.get_origin(hint) is typing.Union:
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    if typing.get_origin(hint) is list:
        return "list"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(hint, "str")


def _merged(base: dict, overrides: dict[str, Any]) -> dict:
    data = copy.deepcopy(base)
    for key, value in overrides.items():
        set_path(data, key, value)
    return data


# ------------------------------------------------------------------------------ --set
def _parse(source: str, text: str) -> tuple[str, Any]:
    try:
        return parse_override(text)
    except ConfigError:
        raise SpecError(source, text, "an override must look like key=value",
                        "e.g. --set train.lr=0.1, --set algorithm.num_samples=8, --set scheduler=fifo") from None


def apply_override(data: dict, key: str, value: Any, source: str = "<dict>") -> None:
    """Apply one ``--set key=value`` to a raw sweep mapping.

    ``search.<path>`` sets (or with null removes) a distribution and ``search.<path>.<setting>``
    one of its settings; ``<section>.<setting>`` sets a sweep setting and ``<section>`` replaces a
    whole section (``scheduler=fifo`` is short for ``scheduler={name: fifo}``); a config field
    such as ``train.lr`` is fixed in ``base`` and leaves the search space.
    """
    head, _, rest = key.partition(".")
    if head == "search" and rest:
        search = data.setdefault("search", {}) or {}
        data["search"] = search
        path, _, setting = rest.rpartition(".")
        if rest not in search and path in search and setting in ("dist", "low", "high", "q", "values"):
            if not isinstance(search[path], dict):
                raise SpecError(source, f"search.{path}", "must be a mapping such as {dist: uniform, low: 0, high: 1}")
            search[path][setting] = value
        elif value is None:
            search.pop(rest, None)
        else:
            search[rest] = value
    elif head in SECTIONS and not rest:
        if head in ("algorithm", "scheduler") and isinstance(value, str):
            value = {"name": value}
        data[head] = value
    elif head == "base":
        data.setdefault("base", {})
        try:
            set_path(data["base"], rest, value)
        except ConfigError as error:
            raise SpecError(source, f"base.{error.field}", error.message) from None
    elif head in ("objective", "algorithm", "scheduler", "resources", "storage", "tracking") and "." not in rest:
        section = data.get(head)
        data[head] = section = dict(section) if isinstance(section, dict) else ({"name": section} if section else {})
        section[rest] = value
    elif key in config_paths():
        set_path(data.setdefault("base", {}), key, value)
        if isinstance(data.get("search"), dict):
            data["search"].pop(key, None)
    else:
        raise SpecError(source, key, "is neither a sweep setting nor a config field",
                        "a section (" + ", ".join(SECTIONS) + "), <section>.<setting>, search.<field>, "
                        "base.<field>, or a config field such as train.lr")


# ------------------------------------------------------------------------------ validation
class _Validator:
    def __init__(self, source: str):
        self.source = source

    def error(self, field_path: str, problem: str, allowed: Optional[str] = None) -> SpecError:
        return SpecError(self.source, field_path, problem, allowed)

    def section(self, cls, data, name: str):
        if data is None:
            return cls()
        try:
            return build_typed(cls, data, name + ".")
        except ConfigError as error:
            raise self.error(error.field, error.message) from None

    def spec(self, data: dict) -> SweepSpec:
        unknown = [k for k in data if k not in SECTIONS]
        if unknown:
            raise self.error(str(unknown[0]), "unknown key", ", ".join(SECTIONS))
        name = data.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.error("name", f"must name the sweep (it names its storage folder), got {name!r}",
                             "letters, digits, '_', '-', '.', starting with a letter or digit")
        description = data.get("description")
        if description is not None and not isinstance(description, str):
            raise self.error("description", f"must be a string, got {description!r}")
        base = data.get("base")
        if not isinstance(base, dict):
            raise self.error("base", f"must be an ExperimentConfig mapping, got {base!r}",
                             "benchmark, model, strategy, train, seed (as `clsweep train` reads)")
        search = self.search(data.get("search"))
        first = self.check_values(base, search)
        n_tasks = first.benchmark.n_tasks
        objective = self.objective(data.get("objective"), first, search)
        algorithm = self.algorithm(data.get("algorithm"), search, base, first)
        scheduler = self.scheduler(data.get("scheduler"), search, algorithm, n_tasks)
        resources = self.resources(data.get("resources"), first, search)
        storage = self.storage(data.get("storage"), scheduler)
        max_failures = data.get("max_failures", 1)
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
            raise self.error("max_failures", f"got {max_failures!r}", "an integer >= 0 (retries per trial)")
        tracking = self.section(TrackingSpec, data.get("tracking"), "tracking")
        return SweepSpec(name, base, search, objective, algorithm, scheduler, resources, storage, max_failures,
                         tracking, description, self.source)

    # -------------------------------------------------------------- search
    def search(self, data) -> dict[str, Distribution]:
        if not isinstance(data, dict) or not data:
            raise self.error("search", f"must map config fields to distributions, got {data!r}",
                             "e.g. {train.lr: {dist: loguniform, low: 1.0e-3, high: 0.1}}")
        paths = config_paths()
        searchable = [p for p in paths if p not in NOT_SEARCHABLE]
        out = {}
        for key, spec in data.items():
            where = f"search.{key}"
            if key in NOT_SEARCHABLE:
                raise self.error(where, "cannot be searched: a sweep loads one dataset, shares it between its "
                                        "trials, and counts time in tasks seen; write one sweep file per benchmark",
                                 "any other config field")
            if key not in paths:
                close = difflib.get_close_matches(str(key), searchable, n=3)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise self.error(where, f"is not a config field{hint}", ", ".join(searchable))
            out[key] = self.distribution(where, spec, field_kind(key))
        return out

    def distribution(self, where: str, data, kind: str) -> Distribution:
        if not isinstance(data, dict) or "dist" not in data:
            raise self.error(where, f"must be a distribution mapping with a 'dist', got {data!r}",
                             "{dist: " + " | ".join(DISTRIBUTIONS) + ", ...}")
        if data["dist"] not in DISTRIBUTIONS:
            raise self.error(where + ".dist", f"unknown distribution {data['dist']!r}", ", ".join(DISTRIBUTIONS))
        d = self.section(Distribution, data, where)
        settings = DISTRIBUTIONS[d.dist]
        for key in ("low", "high", "q", "values"):
            present = getattr(d, key) is not None
            if present and key not in settings:
                raise self.error(f"{where}.{key}", f"is not a setting of {d.dist}", ", ".join(settings))
            if not present and key in settings:
                raise self.error(where, f"{d.dist} needs {key}", ", ".join(settings))
        if d.discrete:
            if not isinstance(d.values, list) or not d.values:
                raise self.error(f"{where}.values", f"must be a non-empty list, got {d.values!r}", "a list of values")
            if len({repr(v) for v in d.values}) < len(d.values):
                raise self.error(f"{where}.values", f"has repeated values: {d.values!r}", "distinct values")
            return d
        if kind not in ("int", "float"):
            raise self.error(where, f"{d.dist} draws numbers but this field holds a {kind}", "choice, grid")
        if not d.low < d.high:
            raise self.error(where, f"low ({d.low}) must be below high ({d.high})", "low < high")
        if d.dist in ("loguniform", "qloguniform") and d.low <= 0:
            raise self.error(f"{where}.low", f"{d.dist} needs low > 0, got {d.low}", "0 < low < high")
        if d.q is not None:
            if d.q <= 0:
                raise self.error(f"{where}.q", f"must be > 0, got {d.q}", "a positive step")
            for bound in ("low", "high"):
                ratio = getattr(d, bound) / d.q
                if abs(ratio - round(ratio)) > 1e-9 * max(1.0, abs(ratio)):
                    raise self.error(f"{where}.{bound}", f"{getattr(d, bound)} is not a multiple of q={d.q}",
                                     "low and high that are multiples of q")
        integral = all(v is None or float(v).is_integer() for v in (d.low, d.high, d.q))
        if d.dist == "randint" and not integral:
            raise self.error(where, f"randint needs integer bounds, got low={d.low}, high={d.high}", "integers")
        if kind == "int":
            if d.dist in ("uniform", "loguniform") or not integral:
                raise self.error(where, f"this field holds integers; {d.dist} with low={d.low}, high={d.high}, "
                                        f"q={d.q} draws fractions",
                                 "randint, choice, grid, or quniform/qloguniform with integer low, high and q")
        if integral and (kind == "int" or d.dist == "randint"):
            d.low, d.high = int(d.low), int(d.high)
            d.q = None if d.q is None else int(d.q)
        return d

    def check_values(self, base: dict, search: dict[str, Distribution]) -> ExperimentConfig:
        """Every candidate value of every distribution, with the others at their first value, must
        make a valid ExperimentConfig. Candidate values are normalised by the config (types,
        ``"1e-3"`` strings). Returns the config with all first values."""
        first = {k: d.candidates()[0] for k, d in search.items()}
        try:
            config = ExperimentConfig.from_dict(_merged(base, first))
        except ConfigError as error:
            if error.field in search:
                raise self.invalid(error.field, search[error.field], first[error.field], error) from None
            raise self.error(f"base.{error.field}" if error.field != "<root>" else "base", error.message) from None
        for key, d in search.items():
            normalised = []
            for value in d.candidates():
                try:
                    normalised.append(config.with_overrides({key: value}).flat()[key])
                except ConfigError as error:
                    raise self.invalid(key, d, value, error) from None
            if d.discrete:
                d.values = normalised
        return config

    def invalid(self, key: str, d: Distribution, value, error: ConfigError) -> SpecError:
        """``value`` of ``d`` makes the config invalid: say which field and what it accepts."""
        if isinstance(error, RuleError) and error.field == key:
            return self.error(f"search.{key}", f"{d.describe(value)} is not a valid {key}", error.allowed)
        problem = error.message.removesuffix(f"; allowed: {error.allowed}")
        return self.error(f"search.{key}", f"{d.describe(value)} makes an invalid config: {error.field}: {problem}",
                          error.allowed)

    # -------------------------------------------------------------- objective, algorithm, scheduler
    @staticmethod
    def values_of(key: str, first_value, search: dict[str, Distribution]) -> list:
        """Every value a trial's ``key`` can take: the searched values, else the base config's."""
        d = search.get(key)
        return list(d.values) if d is not None and d.discrete else [first_value]

    def objective(self, data, first: ExperimentConfig, search: dict[str, Distribution]) -> Objective:
        objective = self.section(Objective, data, "objective")
        metric = objective.metric
        if metric.startswith("test_"):
            raise self.error("objective.metric", f"{metric!r} is measured on test data; a sweep selects on "
                                                 f"validation data so that the test score stays unbiased",
                             ", ".join(OBJECTIVES))
        if metric not in OBJECTIVES:
            raise self.error("objective.metric", f"unknown metric {metric!r}", ", ".join(OBJECTIVES))
        for scenario in self.values_of("benchmark.scenario", first.benchmark.scenario, search):
            if metric.removeprefix("val_") in UNMEASURABLE.get(scenario, ()):
                raise self.error("objective.metric", f"{metric!r} is not measured in the {scenario}-incremental "
                                                     f"scenario (clcore reports NaN: see clcore.metrics.UNMEASURABLE)",
                                 ", ".join(m for m in OBJECTIVES if m.removeprefix("val_")
                                           not in UNMEASURABLE.get(scenario, ())))
        if first.benchmark.val_fraction == 0:  # the objective would be NaN in every trial
            raise self.error("base.benchmark.val_fraction", f"is 0: no validation data for the objective {metric!r}",
                             "a fraction in (0, 1), e.g. 0.1")
        objective.mode = objective.mode or OBJECTIVES[metric]
        if objective.mode not in ("max", "min"):
            raise self.error("objective.mode", f"got {objective.mode!r}", "max, min")
        return objective

    def algorithm(self, data, search: dict[str, Distribution], base: dict, first: ExperimentConfig) -> Algorithm:
        a = self.section(Algorithm, data, "algorithm")
        if a.name not in ALGORITHMS:
            raise self.error("algorithm.name", f"unknown search algorithm {a.name!r}", ", ".join(ALGORITHMS))
        if a.num_samples is None:
            if a.name != "grid":
                raise self.error("algorithm.num_samples", f"{a.name} needs the number of trials",
                                 "an integer >= 1")
            a.num_samples = 1
        if a.num_samples < 1:
            raise self.error("algorithm.num_samples", f"got {a.num_samples}", "an integer >= 1")
        if a.max_concurrent is not None and a.max_concurrent < 1:
            raise self.error("algorithm.max_concurrent", f"got {a.max_concurrent}", "an integer >= 1, or null")
        if a.name != "optuna":
            for key in ("sampler", "n_startup_trials"):
                if getattr(a, key) is not None:
                    raise self.error(f"algorithm.{key}", f"is a setting of optuna, not of {a.name}",
                                     "num_samples, max_concurrent, seed, points_to_evaluate")
        else:
            a.sampler = a.sampler or "tpe"
            if a.sampler not in SAMPLERS:
                raise self.error("algorithm.sampler", f"unknown optuna sampler {a.sampler!r}", ", ".join(SAMPLERS))
            if a.n_startup_trials is not None and (a.sampler != "tpe" or a.n_startup_trials < 1):
                raise self.error("algorithm.n_startup_trials", f"got {a.n_startup_trials} with sampler {a.sampler}",
                                 "an integer >= 1, with sampler tpe")
        grid = [k for k, d in search.items() if d.dist == "grid"]
        if a.name == "optuna":
            if grid:
                raise self.error(f"search.{grid[0]}", "optuna samples and cannot take a grid",
                                 "choice (sampled by optuna), or algorithm grid/random for a grid")
            quantised_log = [k for k, d in search.items() if d.dist == "qloguniform"]
            if quantised_log:
                raise self.error(f"search.{quantised_log[0]}", "optuna cannot quantise a log scale",
                                 "loguniform or quniform with optuna; qloguniform with algorithm random")
        if a.name == "grid":
            sampled = [k for k, d in search.items() if d.dist != "grid"]
            if sampled:
                raise self.error(f"search.{sampled[0]}", f"algorithm grid takes every value of a grid, "
                                                         f"not a {search[sampled[0]].dist}",
                                 "dist: grid for every key (or algorithm random to mix grids and samples)")
            if a.points_to_evaluate:
                raise self.error("algorithm.points_to_evaluate", "a grid already names every point",
                                 "points_to_evaluate with optuna or random")
        for i, point in enumerate(a.points_to_evaluate or []):
            self.point(f"algorithm.points_to_evaluate[{i}]", point, search, first)
        return a

    def point(self, where: str, point, search: dict[str, Distribution], first: ExperimentConfig) -> None:
        if not isinstance(point, dict) or not point:
            raise self.error(where, f"must map search keys to values, got {point!r}", ", ".join(search))
        for key, value in point.items():
            if key not in search:
                raise self.error(f"{where}.{key}", "is not a key of the search space", ", ".join(search))
            d = search[key]
            try:
                value = point[key] = first.with_overrides({key: value}).flat()[key]
            except ConfigError as error:
                raise self.error(f"{where}.{key}", f"{value!r} makes an invalid config: {error}") from None
            if not d.contains(value):
                allowed = repr(d.values) if d.discrete else f"[{d.low}, {d.high}]"
                raise self.error(f"{where}.{key}", f"{value!r} is outside the search space", allowed)
        try:
            first.with_overrides(point)
        except ConfigError as error:
            raise self.error(where, f"makes an invalid config: {error}") from None

    def scheduler(self, data, search: dict[str, Distribution], algorithm: Algorithm, n_tasks: int) -> Scheduler:
        if isinstance(data, str):
            data = {"name": data}
        s = self.section(Scheduler, data, "scheduler")
        if s.name not in SCHEDULERS:
            raise self.error("scheduler.name", f"unknown scheduler {s.name!r}", ", ".join(SCHEDULERS))
        defaults = SCHEDULERS[s.name]
        for f in dataclasses.fields(Scheduler):
            if f.name == "name":
                continue
            if f.name not in defaults and getattr(s, f.name) is not None:
                raise self.error(f"scheduler.{f.name}", f"is not a setting of scheduler {s.name!r}",
                                 ", ".join(defaults) or "none (to switch schedulers from the command line, "
                                                         "replace the section: --set scheduler=fifo)")
            if f.name in defaults and getattr(s, f.name) is None:
                setattr(s, f.name, copy.copy(defaults[f.name]))
        tasks = f"tasks seen, 1..{n_tasks} (benchmark.n_tasks)"
        if s.grace_period is not None and not 1 <= s.grace_period <= n_tasks:
            raise self.error("scheduler.grace_period", f"got {s.grace_period}", tasks)
        if s.reduction_factor is not None and s.reduction_factor <= 1:
            raise self.error("scheduler.reduction_factor", f"got {s.reduction_factor}", "a number > 1")
        if s.brackets is not None and s.brackets < 1:
            raise self.error("scheduler.brackets", f"got {s.brackets}", "an integer >= 1")
        if s.min_samples_required is not None and s.min_samples_required < 1:
            raise self.error("scheduler.min_samples_required", f"got {s.min_samples_required}", "an integer >= 1")
        if s.name == "pbt":
            self.pbt(s, search, algorithm, n_tasks)
        return s

    def pbt(self, s: Scheduler, search: dict[str, Distribution], algorithm: Algorithm, n_tasks: int) -> None:
        if algorithm.name == "optuna":
            raise self.error("scheduler.name", "pbt explores by itself and cannot follow optuna's suggestions",
                             "algorithm random (the initial population) or grid with pbt")
        if not 1 <= s.perturbation_interval < n_tasks:
            raise self.error("scheduler.perturbation_interval",
                             f"got {s.perturbation_interval}; pbt can only exploit between tasks",
                             f"1..{n_tasks - 1} tasks (benchmark.n_tasks is {n_tasks})")
        if not 0 <= s.burn_in_period < n_tasks:
            raise self.error("scheduler.burn_in_period", f"got {s.burn_in_period}", f"0..{n_tasks - 1} tasks")
        if not 0 < s.quantile_fraction <= 0.5:
            raise self.error("scheduler.quantile_fraction", f"got {s.quantile_fraction}", "(0, 0.5]")
        if not 0 <= s.resample_probability <= 1:
            raise self.error("scheduler.resample_probability", f"got {s.resample_probability}", "[0, 1]")
        can_mutate = mutable_paths()
        mutable = [k for k, d in search.items() if k in can_mutate and d.dist != "grid"]
        if s.mutate is None:
            s.mutate = mutable
        for key in s.mutate:
            if key not in search:
                raise self.error("scheduler.mutate", f"{key!r} is not a key of the search space",
                                 ", ".join(mutable) or "none")
            if key not in can_mutate:
                raise self.error("scheduler.mutate", f"pbt cannot change {key} in a running trial (the "
                                                     f"checkpoint it continues from would not fit)",
                                 ", ".join(can_mutate))
            if search[key].dist == "grid":
                raise self.error(f"search.{key}", "pbt cannot mutate a grid", "choice or a range for keys pbt mutates")
        if not s.mutate:
            raise self.error("search", "pbt needs at least one key it can mutate in a running trial",
                             ", ".join(can_mutate) + " (with a range or choice)")

    def storage(self, data, scheduler: Scheduler) -> Storage:
        storage = self.section(Storage, data, "storage")
        if not storage.path:
            raise self.error("storage.path", "must not be empty", "a directory path")
        if _URI.match(storage.path):
            raise self.error("storage.path", f"{storage.path!r} is a URI; sweeps keep their storage in a directory "
                                             f"that the driver and every Ray node can read (a cluster's shared "
                                             f"mount), and remote object stores are not supported",
                             "a local or mounted directory path, e.g. ./ray_results or /mnt/shared/ray_results")
        if scheduler.name == "pbt":
            # PBT continues trials from other trials' checkpoints; with a limit, Ray Tune (2.x) deletes
            # checkpoints PBT still needs and fails the trials that own them.
            if storage.checkpoints_to_keep is not None:
                raise self.error("storage.checkpoints_to_keep",
                                 f"got {storage.checkpoints_to_keep}; pbt copies checkpoints between trials, and "
                                 f"Ray Tune deletes them too early when their number is limited", "null with pbt")
        elif storage.checkpoints_to_keep is None:
            storage.checkpoints_to_keep = 2
        elif storage.checkpoints_to_keep < 1:
            raise self.error("storage.checkpoints_to_keep", f"got {storage.checkpoints_to_keep}",
                             "an integer >= 1, or null for all")
        return storage

    def resources(self, data, first: ExperimentConfig, search: dict[str, Distribution]) -> Resources:
        r = self.section(Resources, data, "resources")
        if r.cpu <= 0:
            raise self.error("resources.cpu", f"got {r.cpu}", "a number > 0 (fractions share a CPU)")
        if r.gpu < 0 or (r.gpu > 1 and not float(r.gpu).is_integer()):
            raise self.error("resources.gpu", f"got {r.gpu}", "0, a fraction in (0, 1], or a whole number")
        device = first.train.device
        if r.gpu > 0 and device == "cpu":
            raise self.error("resources.gpu", f"{r.gpu} GPU per trial, but base.train.device is 'cpu'",
                             "gpu: 0 with device cpu, or device auto/cuda")
        if r.gpu == 0 and device.startswith("cuda"):
            raise self.error("resources.gpu", f"0, but base.train.device is {device!r}: a trial would get no GPU",
                             "gpu > 0 (e.g. 0.25 to share a GPU between four trials), or device auto/cpu")
        if r.gpu == 0 and True in self.values_of("train.amp", first.train.amp, search):
            raise self.error("base.train.amp" if "train.amp" not in search else "search.train.amp",
                             "bf16 autocast runs on CUDA only, and resources.gpu is 0: trials would run on CPU",
                             "amp false, or resources.gpu > 0")
        return r


__all__ = ["SweepSpec", "SpecError", "Distribution", "load_spec", "apply_override", "encode_value", "decode_value",
           "field_kind",
           "DISTRIBUTIONS", "OBJECTIVES", "SCHEDULERS"]
