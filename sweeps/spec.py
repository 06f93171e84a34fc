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
    objective: {metric: val_average_accuracy, mode: max,      # a validation metric, never test
                require: {val_min_accuracy_current_task: ">= 0.9"}}   # kept after every task, or rejected
    reference: {strategy: joint, lr: [0.1, 0.01]}   # a*_k per task, trained first: intransigence,
                                          # val_min_plasticity_ratio (naive + '>= 0.8': CHF's drop rule)
    selection: {finalists: 3, seeds: 3}   # the 3 best trained again on 3 fresh seeds; the best mean wins
    algorithm: {name: optuna, num_samples: 32, max_concurrent: null, seed: 0,   # null: what the cluster fits
                points_to_evaluate: [{strategy.lambda: 100.0, train.lr: 0.01}]}
    scheduler: {name: asha, grace_period: 2, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}           # per trial; fractions allowed
    storage: {path: ./ray_results}        # checkpoints_to_keep: 2 per trial (pbt: null, all); keep_ended: false
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
reads ``<file>: <field>: <problem>; allowed: ...``. The file's shape is the pydantic models below
(closed sections, unions tagged on ``dist`` and ``name``, one value's bounds; `sweeps.schema` makes
the JSON Schema of the same models); `_Rules` checks what lies between fields. A distribution is
checked against the field it searches: each bound (or value) is applied to the base config, so
ExperimentConfig's own rules decide (lambda > 0, alpha in [0, 1], delta_t an integer >= 1,
decay_factor in (0, 1], a parameter the strategy does not have, ...): every value of every
distribution must make a valid config with the first value of all the others. A parameter that
exists only under a choice of a searched sibling (its declaration's ``applies_when``, e.g.
``strategy.decay_factor`` with ``strategy.mode: {dist: choice, values: [separate, online]}``) is
conditional (`SweepSpec.conditions`): checked with its condition met, left out of trials where it is
not, and asked for by Optuna only where it is (define-by-run, `sweeps.space.define_by_run`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass
import re
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from clcore.config import (BenchmarkConfig, ConfigError, ExperimentConfig, StrategyConfig, YamlFileError, config_paths,
                           mutable_paths, parse_override, read_yaml_file, set_path)
from clcore.params import RuleError, coerce
from clcore.metrics import UNMEASURABLE, WITH_REFERENCE


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


# Objective metrics (clcore reports them after every task) and the direction that is better.
OBJECTIVES = {
    "val_average_accuracy": "max",
    "val_forgetting": "min",
    "val_bwt": "max",
    "val_fwt": "max",
    "val_accuracy_current_task": "max",
    "val_min_accuracy_current_task": "max",
    "val_intransigence": "min",
    "val_min_plasticity_ratio": "max",
}
# Metrics ``objective.require`` may bound: functions of the validation accuracy matrix (and the
# reference's a*_k) alone, so any report's matrix tells whether the requirements held after every task.
REQUIRABLE = ("val_average_accuracy", "val_forgetting", "val_bwt", "val_accuracy_current_task",
              "val_min_accuracy_current_task", "val_intransigence", "val_min_plasticity_ratio")
NEEDS_REFERENCE = tuple(f"val_{name}" for name in WITH_REFERENCE)  # measured against ``reference``
OBJECTIVE_ATTR = "clsweep_objective"  # what trials report to the schedulers and searchers (`Objective.ranked`)
REQUIREMENT_PENALTY = 2.0  # objective metrics lie in [-1, 1]: a broken requirement ranks below every kept one
ALGORITHMS = ("optuna", "random", "grid")
SAMPLERS = ("tpe", "random")
# Fields a sweep cannot search: the dataset is loaded once per sweep and shared by its trials, and
# benchmark.n_tasks is the schedulers' time axis.
NOT_SEARCHABLE = ("benchmark.name", "benchmark.data_dir", "benchmark.download", "benchmark.n_tasks",
                  "benchmark.task_range", "benchmark.visible_tasks",  # (which tasks trials see is the protocol's)
                  "schedule")  # (per_task's result: the search space is each task's)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # s3://, gs://, file://, hdfs://: not a directory path
NUMBER_TEXT = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"  # YAML 1.1 reads 1e-3 as a string


# ------------------------------------------------------------------------------ value kinds
def _read(kind: type):
    """A value read as clcore reads a config value (`clcore.params.coerce`): whole floats for
    integers, numeric strings for floats, never a bool for a number."""
    return BeforeValidator(lambda value: coerce(kind, value, ""))


def _kind(kind: type, **bounds):
    """``kind`` as clcore reads it, with pydantic bounds (``gt=0``...) that the JSON Schema shows too."""
    return Annotated[kind, Field(**bounds), _read(kind)] if bounds else Annotated[kind, _read(kind)]


Int, Float, Bool, Str = _kind(int), _kind(float), _kind(bool), _kind(str)
# A distribution's bound: a number, or the string YAML 1.1 makes of 1e-3 (the schema allows both).
Number = Annotated[float, BeforeValidator(lambda value: coerce(float, value, ""), json_schema_input_type=Union[
    float, Annotated[str, Field(pattern=NUMBER_TEXT)]])]


class _Section(BaseModel):
    """A closed section of the sweep file: a key it does not name is an error."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def unknown(cls, tag: Optional[str]) -> tuple[str, str]:
        """(problem, allowed) for a key this section does not have; ``tag`` names the union member."""
        return "unknown key", ", ".join(cls.model_fields)


# ------------------------------------------------------------------------------ search
class Distribution(_Section):
    """One searched field's distribution; the subclasses are tagged on ``dist``."""

    noun: ClassVar[str] = "distribution"

    @classmethod
    def unknown(cls, tag):
        return f"is not a setting of {tag}", ", ".join(cls.setting_names())

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        return tuple(name for name in cls.model_fields if name != "dist")

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
        return self.model_dump()


class Range(Distribution):
    """Sampled between ``low`` and ``high`` (``randint``: integers, both inclusive)."""

    dist: Literal["loguniform", "uniform", "randint"]
    low: Number
    high: Number
    q: ClassVar[None] = None
    values: ClassVar[None] = None


class Quantised(Distribution):
    """Sampled between ``low`` and ``high`` on multiples of ``q``."""

    dist: Literal["quniform", "qloguniform"]
    low: Number
    high: Number
    q: Number
    values: ClassVar[None] = None


class Values(Distribution):
    """``choice`` samples one of ``values``; ``grid`` takes every one."""

    dist: Literal["choice", "grid"]
    values: Annotated[list[Any], Field(min_length=1)]
    low: ClassVar[None] = None
    high: ClassVar[None] = None
    q: ClassVar[None] = None


DISTRIBUTION_KINDS = (Range, Quantised, Values)
DISTRIBUTIONS = {dist: kind.setting_names() for kind in DISTRIBUTION_KINDS  # dist -> its settings
                 for dist in typing.get_args(kind.model_fields["dist"].annotation)}


# ------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class Requirement:
    """``metric op bound``, e.g. ``val_min_accuracy_current_task >= 0.9``."""

    metric: str
    op: str
    bound: float

    def holds(self, value: float) -> bool:
        return {">=": value >= self.bound, ">": value > self.bound, "<=": value <= self.bound,
                "<": value < self.bound}[self.op]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


_REQUIREMENT = re.compile(r"^\s*(>=|<=|>|<)\s*(" + NUMBER_TEXT.strip("^$") + r")\s*$")


class Objective(_Section):
    """The metric selection maximises or minimises, and ``require``: bounds every trial must keep after
    every task (``{val_min_accuracy_current_task: ">= 0.9"}``: it learned each task when it came), or
    it is *rejected*: never the best trial, and ranked by schedulers and searchers below every trial
    that kept them (`ranked`)."""

    metric: Annotated[Literal[tuple(OBJECTIVES)], Field(title="metric")] = "val_average_accuracy"
    mode: Optional[Literal["max", "min"]] = None  # default: the metric's better direction
    require: dict[str, Str] = Field(default_factory=dict)

    @field_validator("require")
    @classmethod
    def _bounds(cls, require: dict) -> dict:
        for metric, text in require.items():
            if metric not in REQUIRABLE:
                raise ConfigError("objective.require", f"cannot bound {metric!r} (a requirement is checked on "
                                                       f"the validation accuracy matrix after every task)",
                                  ", ".join(REQUIRABLE))
            if not _REQUIREMENT.match(text):
                raise ConfigError("objective.require", f"{metric}: {text!r} is not a bound",
                                  "'>= 0.9', '> 0.5', '<= 0.1' or '< 0.2'")
        return require

    def requirements(self) -> list[Requirement]:
        out = []
        for metric, text in self.require.items():
            op, bound = _REQUIREMENT.match(text).group(1, 2)
            out.append(Requirement(metric, op, float(bound)))
        return out

    def broken(self, val_matrix: list, reference: Optional[list[float]] = None) -> Optional[str]:
        """The first requirement the trial whose validation accuracy matrix is ``val_matrix`` broke,
        as ``"<requirement>, broken after task k: <value>"``; None while it keeps them all.
        ``reference``: the sweep's validation a*_k (``reference``), for the metrics measured against it."""
        from clcore import metrics as M  # pure Python: no torch

        requirements = self.requirements()
        for k in range(1, len(val_matrix) + 1) if requirements else ():
            values = M.summary(val_matrix[:k], reference=reference)
            for r in requirements:
                value = values[r.metric.removeprefix("val_")]
                if not r.holds(value):
                    return f"{r}, broken after task {k}: {value:.4f}"
        return None

    def ranked(self, value: float, val_matrix: list, reference: Optional[list[float]] = None) -> float:
        """What a trial reports to the schedulers and searchers (``OBJECTIVE_ATTR``): its objective,
        moved by ``REQUIREMENT_PENALTY`` to the worse side once it broke a requirement, so that it ranks
        below every trial that kept them and, among the rejected, by its own score."""
        if self.broken(val_matrix, reference) is None:
            return value
        return value - REQUIREMENT_PENALTY if self.mode == "max" else value + REQUIREMENT_PENALTY

    @field_validator("metric", mode="before")
    @classmethod
    def _validation_data_only(cls, metric):
        if isinstance(metric, str) and metric.startswith("test_"):
            raise ConfigError("objective.metric", f"{metric!r} is measured on test data; a sweep selects on "
                                                  f"validation data so that the test score stays unbiased",
                              ", ".join(OBJECTIVES))
        return metric


class Algorithm(_Section):
    name: Annotated[Literal[ALGORITHMS], Field(title="search algorithm")] = "optuna"
    num_samples: Optional[_kind(int, ge=1)] = None  # trials (grid: repeats of the grid, default 1)
    max_concurrent: Optional[_kind(int, ge=1)] = None  # null: as many as the cluster's resources fit at the start (hyperband, pbt: no cap)
    seed: Optional[Int] = 0
    sampler: Annotated[Optional[Literal[SAMPLERS]], Field(title="optuna sampler")] = None  # optuna: tpe (default)
    n_startup_trials: Optional[_kind(int, ge=1)] = None  # optuna's tpe only: random trials before TPE starts
    points_to_evaluate: Optional[list[Any]] = None  # first trials, e.g. [{strategy.lambda: 100.0}]


class Scheduler(_Section):
    """A trial scheduler and its settings (tagged on ``name``); the time unit is tasks seen."""

    noun: ClassVar[str] = "scheduler"
    # what its trials wait for, paused, at a milestone ("" for none): every trial is then created at once
    # (the cluster's resources bound how many run), since a cap on trials counts the paused ones
    waits_for: ClassVar[str] = ""

    @classmethod
    def unknown(cls, tag):
        return (f"is not a setting of scheduler {tag!r}", ", ".join(cls.setting_names()) or
                "none (to switch schedulers from the command line, replace the section: --set scheduler=fifo)")

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        return tuple(name for name in cls.model_fields if name != "name")

    def settings(self) -> dict:
        return {name: getattr(self, name) for name in self.setting_names()}


TaskCount = _kind(int, ge=1)  # tasks seen; the upper bound, benchmark.n_tasks, is checked with the base


class Fifo(Scheduler):
    name: Literal["fifo"]


class Asha(Scheduler):
    name: Literal["asha"]
    grace_period: TaskCount = 1
    reduction_factor: _kind(float, gt=1) = 3.0
    brackets: _kind(int, ge=1) = 1


class HyperBand(Scheduler):
    name: Literal["hyperband"]
    waits_for: ClassVar[str] = "the rest of their bracket"  # halved when all reached its milestone
    reduction_factor: _kind(float, gt=1) = 3.0


class Median(Scheduler):
    name: Literal["median"]
    grace_period: TaskCount = 1
    min_samples_required: _kind(int, ge=1) = 3


class Pbt(Scheduler):
    """Synchronous PBT; ``mutate`` defaults to every searched field it may change in a running trial."""

    name: Literal["pbt"]
    waits_for: ClassVar[str] = "the rest of the population"  # synchronous: exploits when all reached the interval
    perturbation_interval: TaskCount = 1
    burn_in_period: _kind(int, ge=0) = 0
    quantile_fraction: _kind(float, gt=0, le=0.5) = 0.25
    resample_probability: _kind(float, ge=0, le=1) = 0.25
    mutate: Optional[list[Str]] = None


SCHEDULER_KINDS = (Fifo, Asha, HyperBand, Median, Pbt)
SCHEDULERS = {typing.get_args(kind.model_fields["name"].annotation)[0]: kind for kind in SCHEDULER_KINDS}


def _scheduler_by_name(value):
    """``scheduler: fifo`` is short for ``{name: fifo}``, and a mapping without a name is fifo's."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and "name" not in value:
        return {"name": "fifo", **value}
    return value


class Resources(_Section):
    cpu: _kind(float, gt=0) = 1.0  # per trial; fractions share a CPU
    gpu: _kind(float, ge=0) = 0.0  # 0, a fraction in (0, 1], or a whole number


class Storage(_Section):
    path: Annotated[str, Field(min_length=1), _read(str)] = "ray_results"  # relative: from the working directory
    checkpoints_to_keep: Optional[_kind(int, ge=1)] = None  # per trial while it runs; default 2; pbt keeps all (null)
    keep_ended: Bool = False  # keep ended trials' checkpoints after the sweep (default: the best trial's newest only)


class Selection(_Section):
    """After the search, the ``finalists`` best complete trials train again on ``seeds`` fresh seeds
    each (the config's ``seed``: initialisation and batch order; the benchmark, ``benchmark.seed``,
    stays), and the winner is the finalist with the best mean validation objective: a seed that was
    lucky in the search (the winner's curse) does not pick the winner. 0 finalists: the search decides."""

    finalists: _kind(int, ge=0) = 0
    seeds: _kind(int, ge=1) = 3

    def fresh_seeds(self, search_seed: int) -> list[int]:
        """Seeds the search did not use (it trained every trial with ``search_seed``)."""
        return [search_seed + 1 + i for i in range(self.seeds)]


class ReferenceSpec(_Section):
    """A reference every trial is measured against, trained before the search (once: a resume reuses
    it). ``strategy``: ``joint`` (trained on all tasks so far: Chaudhry et al.'s a*_k for intransigence)
    or ``naive`` (fine-tuning: how well a task is learned when nothing holds the weights, De Lange et
    al.'s maximal plasticity), with the base config (its strategy replaced; searched train fields at
    their base value) on each of ``lr`` (default: the base's ``train.lr``), in parallel. a*_k is per
    task the best validation accuracy on task k right after learning it over those runs (the test a*_k
    is that run's). Trials then report intransigence and the minimum plasticity ratio (min_k R[k][k] /
    a*_k), which the objective can require: ``{val_min_plasticity_ratio: '>= 0.8'}`` with ``naive`` is
    CHF's 20% drop rule."""

    strategy: Annotated[Optional[Literal["joint", "naive"]], Field(title="reference strategy")] = None  # null: none
    lr: Optional[Annotated[list[_kind(float, gt=0)], Field(min_length=1)]] = None

    @property
    def lrs(self) -> list[float]:
        return list(self.lr or [])


class Protocol(_Section):
    """How hyperparameters are selected (tagged on ``name``): which tasks the search may see."""

    noun: ClassVar[str] = "protocol"

    @classmethod
    def unknown(cls, tag):
        return f"is not a setting of protocol {tag!r}", ", ".join(n for n in cls.model_fields if n != "name") or "none"

    def evaluation_range(self, n_tasks: int) -> Optional[list[int]]:
        """``benchmark.task_range`` of the runs that evaluate the chosen values (None: the whole stream)."""
        return None

    def search_overrides(self) -> dict[str, Any]:
        """Config fields every search trial gets on top of the base (what the protocol lets it see)."""
        return {}


class EndOfTraining(Protocol):
    """Every trial trains the whole stream and is scored on it: what every peer does, and what a
    continual learner, which sees its stream once, could not do."""

    name: Literal["end_of_training"]
    seeds: _kind(int, ge=0) = 0  # > 0: the best trial also trains on that many fresh seeds (its evaluation)

    def describe(self, n_tasks: int) -> str:
        return f"end_of_training: tuned on all {n_tasks} tasks, evaluated on every task"


class Prefix(Protocol):
    """Tune on the first ``tasks`` tasks alone (trials train and are scored on them; the later tasks'
    data never reaches a trial), then fix the chosen values and train them on ``seeds`` fresh seeds on
    the evaluation stream: every task (``evaluate_on: all``; ``tasks: 1`` is Lee et al. 2024's
    first-task protocol) or only the tasks after the prefix, as a stream of their own (``rest``:
    A-GEM's, Chaudhry et al. 2019, tuned on 3 tasks of 20)."""

    name: Literal["prefix"]
    tasks: _kind(int, ge=1)
    evaluate_on: Literal["all", "rest"] = "all"
    seeds: _kind(int, ge=1) = 3

    def evaluation_range(self, n_tasks: int) -> Optional[list[int]]:
        return None if self.evaluate_on == "all" else [self.tasks, n_tasks]

    def search_overrides(self) -> dict[str, Any]:
        return {"benchmark.task_range": [0, self.tasks]}

    def describe(self, n_tasks: int) -> str:
        seen = "task 0" if self.tasks == 1 else f"tasks 0..{self.tasks - 1}"
        evaluated = "every task" if self.evaluate_on == "all" else \
            f"tasks {self.tasks}..{n_tasks - 1} alone (a stream of their own)"
        return f"prefix: tuned on {seen} of {n_tasks}, evaluated on {evaluated}"


class TwoPhase(Protocol):
    """Cha & Cho's two-phase protocol (GTEP, TMLR 2025): tune end of training on another scenario of the
    same shape, the base benchmark with ``tune_on``'s fields (another permutation or split seed, another
    class order, another dataset: Split Fashion-MNIST to tune, Split MNIST to evaluate), then train the
    chosen values on the target, the base benchmark as written, on ``seeds`` fresh seeds. Search trials
    are built from ``tune_on``'s benchmark, and the driver loads its data alone for them: the target's
    data reaches the evaluation runs only."""

    name: Literal["two_phase"]
    tune_on: dict[str, Any]  # benchmark fields, e.g. {seed: 1}, {class_order: [...]}, {name: split_fashion_mnist}
    seeds: _kind(int, ge=1) = 3

    def search_overrides(self) -> dict[str, Any]:
        return {f"benchmark.{key}": value for key, value in self.tune_on.items()}

    def describe(self, n_tasks: int) -> str:
        changed = ", ".join(f"{key} {value}" for key, value in self.tune_on.items())
        return f"two_phase: tuned on all {n_tasks} tasks of the benchmark with {changed}, evaluated on the target"


class Rounds(Protocol):
    """A protocol that chooses per task, one round at a time, each from the model the round before kept:
    its choice is a schedule (a config's ``schedule:``), trained again from scratch on ``seeds`` fresh
    seeds. A round's trials see tasks 0..t alone (``benchmark.visible_tasks: t + 1``)."""

    seeds: _kind(int, ge=1) = 3

    @property
    def metric(self) -> str:
        """The metric a round ranks its trials by."""
        return "val_accuracy_current_task"


class PerTask(Rounds):
    """Lee et al. 2024's current-task and seen-tasks frameworks (arXiv 2404.06466), Renate's tuning at
    each update: one round per task. In round t every candidate the search draws starts from the model
    kept after task t - 1, trains task t alone, and the one with the best validation accuracy on task t
    (``select_on: current``) or on tasks 0..t (``seen``) is kept: the next round starts from its
    checkpoint. A round's trials see tasks 0..t alone (``benchmark.visible_tasks: t + 1``: the later
    tasks' data is not in their benchmark). The chosen values may differ per task: the result is a
    schedule (a config's ``schedule:``), trained again from scratch on ``seeds`` fresh seeds."""

    name: Literal["per_task"]
    select_on: Literal["current", "seen"] = "current"

    @property
    def metric(self) -> str:
        """The metric each round ranks its trials by."""
        return {"current": "val_accuracy_current_task", "seen": "val_average_accuracy"}[self.select_on]

    def describe(self, n_tasks: int) -> str:
        on = "task t" if self.select_on == "current" else "tasks 0..t"
        return (f"per_task: {n_tasks} rounds, each from the model kept after the round before, selected on "
                f"{on}; the schedule evaluated on every task")


STRENGTH = "strategy.lambda"  # the regulariser's strength, what chf decays (every regulariser declares it)


class Chf(Rounds):
    """De Lange et al.'s Continual Hyperparameter Framework (TPAMI 2021; FACIL's grid search), one round
    per task from the model kept after the task before. First the maximal plasticity search: fine-tuning
    (``naive``) trains task t on each of ``lr``, and the best validation accuracy on task t is A*, at lr*.
    Then the stability decay: the strategy trains task t at lr* with its strength (``strategy.lambda``)
    at ``start``, ``start * decay``, ... (``attempts`` values), and the first whose accuracy on task t
    reaches ``(1 - drop) * A*`` is kept (none: the last, the weakest). The attempts run in parallel as far
    as the cluster fits, and stop once the first to pass is known: the sequential answer, in less wall
    time. On task 0 no penalty acts yet: the strategy itself runs the lr search, and its best is kept."""

    name: Literal["chf"]
    lr: Annotated[list[_kind(float, gt=0)], Field(min_length=1)]  # the maximal plasticity search's grid
    start: _kind(float, gt=0)  # the strength each task's stability decay starts from
    drop: _kind(float, gt=0, lt=1) = 0.2
    decay: _kind(float, gt=0, lt=1) = 0.5
    attempts: _kind(int, ge=1) = 10

    # what chf chooses per round: lr* by fine-tuning, then the strength at it
    chosen: ClassVar[tuple[str, ...]] = ("train.lr", STRENGTH)

    def strengths(self) -> list[float]:
        """The stability decay's strengths, in the order they are tried (each the one before times
        ``decay``, as FACIL multiplies: 1e4, 1e3, 100.0, not 100.00000000000001)."""
        values = [self.start]
        for _ in range(self.attempts - 1):
            values.append(values[-1] * self.decay)
        return values

    def describe(self, n_tasks: int) -> str:
        return (f"chf: {n_tasks} rounds, each an lr search by fine-tuning then a decay of lambda from "
                f"{self.start:g} by {self.decay:g} until within {self.drop:g} of its accuracy; the schedule "
                f"evaluated on every task")


PROTOCOL_KINDS = (EndOfTraining, Prefix, TwoPhase, PerTask, Chf)
PROTOCOLS = {typing.get_args(kind.model_fields["name"].annotation)[0]: kind for kind in PROTOCOL_KINDS}


def _protocol_by_name(value):
    """``protocol: end_of_training`` is short for ``{name: end_of_training}``."""
    return {"name": value} if isinstance(value, str) else value


class TrackingSpec(_Section):
    mlflow: Bool = False
    tracking_uri: Optional[Str] = None  # null: $MLFLOW_TRACKING_URI, else the tracking layer's default


AnyDistribution = Annotated[Union[DISTRIBUTION_KINDS], Field(discriminator="dist")]
AnyScheduler = Annotated[Union[SCHEDULER_KINDS], Field(discriminator="name")]
AnyProtocol = Annotated[Union[PROTOCOL_KINDS], Field(discriminator="name")]


# ------------------------------------------------------------------------------ the spec
class SweepSpec(_Section):
    """A clsweep sweep file, validated; the sections are the file's keys, in order."""

    shapes: ClassVar[dict[str, tuple[str, str]]] = {  # what the required keys must be
        "name": ("must name the sweep (it names its storage folder)",
                 "letters, digits, '_', '-', '.', starting with a letter or digit"),
        "base": ("must be an ExperimentConfig mapping", "benchmark, model, strategy, train, seed (as `clsweep train` "
                                                       "reads)"),
        "search": ("must map config fields to distributions",
                   "e.g. {train.lr: {dist: loguniform, low: 1.0e-3, high: 0.1}}"),
    }

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="names the storage folder and the MLflow "
                                                                  "experiment")]
    description: Optional[Str] = None
    base: dict  # the ExperimentConfig mapping as written (searched fields may be absent); clcore validates it
    search: dict[str, AnyDistribution]  # at least one key (`_Rules.search`), none with protocol chf
    objective: Objective = Field(default_factory=Objective)
    protocol: Annotated[AnyProtocol, BeforeValidator(
        _protocol_by_name, json_schema_input_type=Union[Literal[tuple(PROTOCOLS)], AnyProtocol])
    ] = Field(default_factory=lambda: EndOfTraining(name="end_of_training"))
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec)
    selection: Selection = Field(default_factory=Selection)
    algorithm: Algorithm = Field(default_factory=Algorithm)
    scheduler: Annotated[AnyScheduler, BeforeValidator(
        _scheduler_by_name, json_schema_input_type=Union[Literal[tuple(SCHEDULERS)], AnyScheduler])
    ] = Field(default_factory=lambda: Fifo(name="fifo"))
    resources: Resources = Field(default_factory=Resources)
    storage: Storage = Field(default_factory=Storage)
    max_failures: _kind(int, ge=0) = 1  # retries of a crashed trial, from its last task checkpoint
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    _source: str = PrivateAttr("<dict>")  # the file, for messages

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """``tracking:`` with nothing after it (YAML's null) means the section's defaults."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items()
                    if not (v is None and k in cls.model_fields and not cls.model_fields[k].is_required())}
        return data

    def __eq__(self, other) -> bool:  # the same sweep, wherever it was read from
        return isinstance(other, SweepSpec) and self.model_dump() == other.model_dump()

    @property
    def source(self) -> str:
        return self._source

    # -------------------------------------------------------------- trials
    def trial_config(self, params: dict[str, Any]) -> ExperimentConfig:
        """The validated ExperimentConfig of a trial whose searched values are ``params``.

        ``params`` is a trial's Ray config (search keys to values, list values encoded as strings), and
        ``seed`` for a finalist's run on a fresh seed; other keys are ignored.
        """
        values = {**self.decoded(params), **self.protocol.search_overrides()}  # what the search may see, no more
        return ExperimentConfig.from_dict(_merged(self.base, self.active(values)))

    def decoded(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's searched values (and ``seed``) from its Ray config."""
        return {key: decode_value(key, value) for key, value in params.items() if key in self.search or key == "seed"}

    def evaluation_config(self, params: dict[str, Any], seed: int) -> ExperimentConfig:
        """The config the protocol evaluates a trial's values with: the evaluation stream, on ``seed``."""
        config = ExperimentConfig.from_dict(_merged(self.base, self.active({**self.decoded(params), "seed": seed})))
        config.benchmark.task_range = self.evaluation_range
        config.validate()
        return config

    def round_spec(self, task: int, name: str) -> "SweepSpec":
        """Round ``task`` of per_task or chf as a sweep of its own, ``name``: the search on the base that sees
        tasks 0..task alone (``benchmark.visible_tasks``), every trial to that task."""
        base = copy.deepcopy(self.base)
        base.setdefault("benchmark", {})["visible_tasks"] = task + 1
        return self.model_copy(update={"name": name, "base": base, "protocol": EndOfTraining(name="end_of_training")})

    def schedule_config(self, schedule: list[dict[str, Any]], seed: int) -> ExperimentConfig:
        """A per_task or chf choice as a config: the base on ``seed`` with, per task, the values its
        round kept (``schedule``, one mapping per task, as ``schedule.json`` holds them)."""
        data = _merged(self.base, {"seed": seed})
        data["schedule"] = [self.active(dict(values)) for values in schedule]
        return ExperimentConfig.from_dict(data)

    @property
    def evaluation_benchmark(self) -> dict[str, Any]:
        """The benchmark fields the protocol's evaluation sets on a search trial's config (``task_range``
        aside): two_phase's target values of the fields its search changed."""
        if not isinstance(self.protocol, TwoPhase):
            return {}
        target = self.evaluation_config(self.first_values(), 0)
        return {key: getattr(target.benchmark, key) for key in self.protocol.tune_on}

    @property
    def evaluation_range(self) -> Optional[list[int]]:
        """``benchmark.task_range`` of the runs that evaluate the chosen values (None: the whole stream)."""
        return self.protocol.evaluation_range(self.example_config().benchmark.n_tasks)

    @property
    def protocol_description(self) -> str:
        """The protocol in words: the tasks it tunes on and evaluates on."""
        return self.protocol.describe(self.example_config().benchmark.n_tasks)

    @property
    def evaluation_seeds(self) -> list[int]:
        """The fresh seeds the protocol's evaluation trains on (``protocol.seeds`` of them; none for
        ``end_of_training`` unless asked): after the search's and the finalists'."""
        after = self.example_config().seed + (self.selection.seeds if self.selection.finalists else 0)
        return [after + 1 + i for i in range(self.protocol.seeds)]

    def conditions(self) -> dict[str, tuple[str, Any]]:
        """Searched keys that exist only under a value of another searched key, ``{key: (that key, value)}``:
        a strategy parameter declared ``applies_when`` a sibling that is searched with that value among its
        choices (``strategy.decay_factor`` under ``strategy.mode: online``). Optuna asks for such a key only
        when its condition holds (define-by-run); other searchers draw it always and the trial drops it."""
        from clcore.strategies import catalogue  # reads declarations; no torch

        strategy = (self.base.get("strategy") or {}).get("name", StrategyConfig.name)
        declared = catalogue.strategies().get(strategy)
        out = {}
        for key in self.search:
            name = key.removeprefix("strategy.")
            if declared is None or key == name or name not in declared.params.names:
                continue
            applies_when = declared.params[name].applies_when
            if applies_when is None:
                continue
            sibling, wanted = f"strategy.{applies_when[0]}", applies_when[1]
            d = self.search.get(sibling)
            if d is not None and d.discrete and wanted in d.values:
                out[key] = (sibling, wanted)
        return out

    def active(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` without the keys whose condition (`conditions`) they do not meet."""
        conditions = self.conditions()
        return {k: v for k, v in values.items()
                if k not in conditions or values.get(conditions[k][0]) == conditions[k][1]}

    def reference_base(self) -> dict:
        """The base config of the ``reference`` runs: the sweep's base, its strategy replaced by the
        reference's (with none of its parameters) and ``train.lr`` the first of ``reference.lr``."""
        base = {**copy.deepcopy(self.base), "strategy": {"name": self.reference.strategy}}
        if self.reference.lr:
            set_path(base, "train.lr", self.reference.lr[0])
        return base

    def reference_lrs(self) -> list[float]:
        """The learning rates the reference trains with: ``reference.lr``, else the base's."""
        return self.reference.lrs or [ExperimentConfig.from_dict(self.reference_base()).train.lr]

    def example_config(self) -> ExperimentConfig:
        """The config with every searched field at its first value (what the sweep's data comes from)."""
        return self.trial_config(self.first_values())

    def first_values(self) -> dict[str, Any]:
        """Every searched field at its first value, as a trial's Ray config has it."""
        return {k: encode_value(d.candidates()[0]) for k, d in self.search.items()}

    @property
    def n_tasks(self) -> int:
        """Tasks a trial trains (the schedulers' time axis): the stream's, or the protocol's prefix."""
        return self.example_config().benchmark.tasks_run

    @property
    def mode(self) -> str:
        return self.objective.mode

    @property
    def finalist_seeds(self) -> list[int]:
        """The fresh seeds finalists train on: after the one the search trained every trial with."""
        return self.selection.fresh_seeds(self.example_config().seed)

    @property
    def selected_on(self) -> str:
        """The metric the best trial is chosen on (MLflow's ``clsweep.metric``): the objective, or with
        finalists its mean over their fresh seeds, ``finalists_<objective>``."""
        return f"finalists_{self.objective.metric}" if self.selection.finalists else self.objective.metric

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
        """Build and validate a spec; ``overrides`` are ``--set`` pairs (``["train.lr=0.1"]`` or a dict).

        The file's shape (keys, types, names, bounds of one value) is checked by the models above;
        the rules between fields and against the base config by `_Rules`."""
        if not isinstance(data, dict):
            raise SpecError(source, "<file>", "a sweep file must be a YAML mapping", ", ".join(SECTIONS))
        data = copy.deepcopy(data)
        pairs = overrides.items() if isinstance(overrides, dict) else (_parse(source, o) for o in overrides or ())
        for key, value in pairs:
            apply_override(data, key, value, source)
        try:
            spec = cls.model_validate(data)
        except ValidationError as error:
            raise _spec_error(source, error) from None
        spec._source = source
        _Rules(source).check(spec)
        return spec

    def to_dict(self) -> dict:
        """The spec as a YAML-ready mapping; `from_dict` of it gives an equal spec."""
        return self.model_dump(exclude={"description"} if self.description is None else set())

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


SECTIONS = tuple(SweepSpec.model_fields)


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
    such as ``train.lr`` is fixed in ``base`` and leaves the search space and every point to evaluate
    (a point left with no value is dropped).
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
        if head == "algorithm" and isinstance(value, str):  # a scheduler's name: the model reads it
            value = {"name": value}
        data[head] = value
    elif head == "base":
        data.setdefault("base", {})
        try:
            set_path(data["base"], rest, value)
        except ConfigError as error:
            raise SpecError(source, f"base.{error.field}", error.message) from None
    elif head in SECTIONS and head not in ("name", "description", "base", "search", "max_failures") and "." not in rest:
        section = data.get(head)
        data[head] = section = dict(section) if isinstance(section, dict) else ({"name": section} if section else {})
        section[rest] = value
    elif key in config_paths():  # fixed: it leaves the search space and the points to evaluate
        set_path(data.setdefault("base", {}), key, value)
        if isinstance(data.get("search"), dict):
            data["search"].pop(key, None)
        algorithm = data.get("algorithm")
        if isinstance(algorithm, dict) and isinstance(algorithm.get("points_to_evaluate"), list):
            points = [{k: v for k, v in p.items() if k != key} if isinstance(p, dict) else p
                      for p in algorithm["points_to_evaluate"]]
            algorithm["points_to_evaluate"] = [p for p in points if p != {}] or None
    else:
        raise SpecError(source, key, "is neither a sweep setting nor a config field",
                        "a section (" + ", ".join(SECTIONS) + "), <section>.<setting>, search.<field>, "
                        "base.<field>, or a config field such as train.lr")


# ------------------------------------------------------------------------------ shape errors
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}  # pydantic's error type -> its constraint and sign


def _spec_error(source: str, error: ValidationError) -> SpecError:
    """pydantic's first complaint as ``<file>: <field>: <problem>; allowed: ...``. An unknown key
    is told first, as it often explains the rest (a misspelt setting is also a missing one)."""
    detail = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    kind, loc, value, context = detail["type"], detail["loc"], detail.get("input"), detail.get("ctx") or {}
    model, union, tag, path = _locate(loc)
    key = loc[-1] if loc else None
    fail = functools.partial(SpecError, source)
    if kind == "extra_forbidden":
        return fail(path, *model.unknown(tag))
    if kind == "union_tag_invalid":
        return fail(f"{path}.{_member_tag(union[0])}", f"unknown {union[0].noun} {context['tag']!r}",
                    ", ".join(_tags(union)))
    if kind == "value_error" and isinstance(context.get("error"), ConfigError):  # clcore's reading, or a rule
        cause = context["error"]
        problem = cause.message.removesuffix(f"; allowed: {cause.allowed}") if cause.allowed else cause.message
        return fail(path, problem, cause.allowed)
    if kind == "literal_error":
        choices = typing.get_args(_unwrap(model.model_fields[key].annotation))
        title = model.model_fields[key].title
        return fail(path, f"unknown {title} {value!r}" if title else f"got {value!r}", ", ".join(map(str, choices)))
    if kind in _BOUNDS:
        constraint, sign = _BOUNDS[kind]
        number = "an integer" if isinstance(value, int) else "a number"
        return fail(path, f"got {value!r}", f"{number} {sign} {context[constraint]}")
    if kind == "missing" and model is not None and issubclass(model, Distribution):
        return fail(path.rpartition(".")[0], f"{tag} needs {key}", ", ".join(model.setting_names()))
    if union and tag is None and kind != "missing":  # a tagged union's value that is not a mapping
        tag_key = _member_tag(union[0])
        return fail(path, f"must be a {union[0].noun} mapping with a {tag_key!r}, got {value!r}",
                    f"{{{tag_key}: {' | '.join(_tags(union))}, ...}}")
    shape = SweepSpec.shapes.get(path) if model is SweepSpec else None
    if shape is not None:
        return fail(path, f"{shape[0]}, got {value if kind != 'missing' else None!r}", shape[1])
    if kind == "missing":
        return fail(path, "is required")
    if kind == "too_short":
        return fail(path, f"must not be empty, got {value!r}")
    return fail(path, f"{detail['msg'].replace('Input should be', 'must be')}, got {value!r}")


def _member_tag(model: type) -> str:
    """The key a tagged union's member is told apart by."""
    return "dist" if "dist" in model.model_fields else "name"


def _tags(union: tuple) -> list[str]:
    return [t for member in union for t in typing.get_args(member.model_fields[_member_tag(member)].annotation)]


def _unwrap(kind):
    """``Optional[X]`` and ``Annotated[X, ...]`` -> ``X``."""
    while True:
        if typing.get_origin(kind) is Annotated:
            kind = typing.get_args(kind)[0]
        elif typing.get_origin(kind) is Union and type(None) in typing.get_args(kind):
            rest = [a for a in typing.get_args(kind) if a is not type(None)]
            kind = rest[0] if len(rest) == 1 else Union[tuple(rest)]
        else:
            return kind


def _locate(loc: tuple) -> tuple[Optional[type], tuple, Optional[str], str]:
    """Where a pydantic error's ``loc`` points: the model holding the last key, the tagged union
    passed on the way (its members), the union member's tag, and the dotted field path."""
    kind: Any = SweepSpec
    model, union, tag, path = None, (), None, ""
    for part in loc:
        kind = _unwrap(kind)
        if typing.get_origin(kind) is Union:  # a tagged union: this part is the tag
            union, tag = typing.get_args(kind), part
            kind = next(m for m in union if part in typing.get_args(m.model_fields[_member_tag(m)].annotation))
            continue
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            model = kind
            kind = kind.model_fields[part].annotation if part in kind.model_fields else None
        elif typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        elif typing.get_origin(kind) is list:
            kind = typing.get_args(kind)[0]
            path += f"[{part}]"
            continue
        path = f"{path}.{part}" if path else str(part)
    if typing.get_origin(_unwrap(kind)) is Union:  # ends at a tagged union: its value was not a mapping
        union = typing.get_args(_unwrap(kind))
    return model, union, tag, path


# ------------------------------------------------------------------------------ rules between fields
def _trials(algorithm: Algorithm, search: dict[str, Distribution]) -> int:
    """How many trials a sweep runs: ``num_samples``, times the grid's size for random and grid search."""
    return algorithm.num_samples * (math.prod(len(d.values) for d in search.values() if d.dist == "grid")
                                    if algorithm.name != "optuna" else 1)


class _Rules:
    """What the models cannot say: distributions against the fields they search and the base config,
    settings that depend on each other or on ``benchmark.n_tasks``; fills defaults that depend on them."""

    def __init__(self, source: str):
        self.source = source

    def error(self, field_path: str, problem: str, allowed: Optional[str] = None) -> SpecError:
        return SpecError(self.source, field_path, problem, allowed)

    def check(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.search(spec.search)
        self.protocol(spec)
        first = self.check_values(spec)
        self.objective(spec.objective, first, spec.search)
        self.algorithm(spec.algorithm, spec.search, first)
        self.scheduler(spec.scheduler, spec.search, spec.algorithm, first.benchmark.tasks_run)
        self.resources(spec.resources, first, spec.search)
        self.storage(spec.storage, spec.scheduler)
        self.selection(spec.selection, spec.search, spec.algorithm)
        self.reference(spec)

    def protocol(self, spec: SweepSpec) -> None:
        """Before the values are checked: a prefix makes every trial's task range, two_phase its benchmark."""
        p = spec.protocol
        if isinstance(p, TwoPhase):
            return self.two_phase(p, spec)
        if isinstance(p, Rounds):
            return self.rounds(p, spec)
        if not isinstance(p, Prefix):
            return
        try:
            n_tasks = coerce(int, (spec.base.get("benchmark") or {}).get("n_tasks", BenchmarkConfig.n_tasks), "")
        except RuleError:
            return  # check_values names the bad n_tasks
        if p.tasks >= n_tasks:
            raise self.error("protocol.tasks", f"got {p.tasks}, but the stream has {n_tasks} tasks (tuning on all of "
                                               f"them is end_of_training)", f"1..{n_tasks - 1}")
        if p.tasks == 1:
            penalty = next((k for k in spec.search if k.startswith("strategy.")), None)
            if penalty is not None:
                raise self.error(f"search.{penalty}", "has no effect on the first task (a strategy's penalty acts "
                                                      "from the second task on), so a search on task 0 alone "
                                                      "cannot choose it", "protocol.tasks >= 2")
        if (spec.base.get("benchmark") or {}).get("task_range") is not None:
            raise self.error("base.benchmark.task_range", "is set, but the protocol decides which tasks trials see",
                             "null (or protocol: end_of_training)")
        if p.evaluate_on == "rest" and spec.reference.strategy is not None:
            raise self.error("reference.strategy", "the reference trains the whole stream, while evaluate_on: rest "
                                                   "trains the tasks after the prefix alone", "null with evaluate_on: rest")

    def rounds(self, p: Rounds, spec: SweepSpec) -> None:
        """A round trains one task from the kept model: its values are what can change between tasks."""
        if isinstance(p, Chf):
            self.chf(p, spec)
        schedulable = mutable_paths()
        for key in spec.search:
            if key not in schedulable:
                raise self.error(f"search.{key}", f"cannot change between tasks, and {p.name} chooses values per "
                                                  f"task (the model, the stream, the optimiser and the seed are fixed "
                                                  f"once task 0 starts)", ", ".join(schedulable))
        if spec.scheduler.name != "fifo":
            raise self.error("scheduler", f"got {spec.scheduler.name}, but a {p.name} trial trains one task and ends: "
                                          f"there is nothing to stop early or to exploit", f"fifo with {p.name}")
        if "metric" not in spec.objective.model_fields_set:  # the protocol names it
            spec.objective = spec.objective.model_copy(update={"metric": p.metric})
            spec.objective.model_fields_set.add("metric")
        if spec.objective.metric != p.metric:
            other = f", or protocol.select_on {'seen' if p.select_on == 'current' else 'current'}" \
                if isinstance(p, PerTask) else ""
            how = f" with select_on {p.select_on}" if isinstance(p, PerTask) else ""
            raise self.error("objective.metric", f"got {spec.objective.metric}, but {p.name}{how} ranks each round "
                                                 f"by {p.metric}", f"{p.metric} (or leave it out){other}")
        if spec.selection.finalists:
            raise self.error("selection.finalists", f"{p.name} keeps one trial per round, from one model", "0")
        if spec.reference.strategy is not None:
            raise self.error("reference.strategy", "the reference trains the whole stream before the first round, "
                                                   "while a round may see its tasks alone", f"null with {p.name}")
        for key in ("visible_tasks", "task_range"):
            if (spec.base.get("benchmark") or {}).get(key) is not None:
                raise self.error(f"base.benchmark.{key}", f"is set, but {p.name} decides which tasks each round "
                                                          f"sees", "null")
        if spec.base.get("schedule") is not None:
            raise self.error("base.schedule", f"is set, but a schedule is what {p.name} chooses", "null")

    def chf(self, p: Chf, spec: SweepSpec) -> None:
        """CHF searches lr and the strength itself: no search of its own, the strategy must have a strength."""
        if spec.search:
            raise self.error(f"search.{next(iter(spec.search))}", "chf searches train.lr (protocol.lr, by fine-tuning) "
                                                                  "and strategy.lambda (decayed from protocol.start) "
                                                                  "itself, and nothing else", "search: {} with chf")
        strategy = (spec.base.get("strategy") or {}).get("name", StrategyConfig.name)
        from clcore.strategies import catalogue

        declared = catalogue.strategies().get(strategy)
        if declared is not None and STRENGTH.removeprefix("strategy.") not in declared.params.names:
            having = sorted(n for n, s in catalogue.strategies().items() if STRENGTH.removeprefix("strategy.")
                            in s.params.names)
            raise self.error("base.strategy.name", f"{strategy} has no strength ({STRENGTH}) for chf to decay",
                             ", ".join(having))
        if "algorithm" not in spec.model_fields_set:  # the rounds are grids of their own
            spec.algorithm = Algorithm(name="grid", num_samples=1)

    def two_phase(self, p: TwoPhase, spec: SweepSpec) -> None:
        fields = [f.name for f in dataclasses.fields(BenchmarkConfig)]
        same_shape = ("n_tasks", "scenario", "task_range")  # what the chosen values must carry over to
        allowed = ", ".join(f for f in fields if f not in same_shape)
        if not p.tune_on:
            raise self.error("protocol.tune_on", "is empty: phase 1 must tune on another scenario than the target",
                             f"benchmark fields: {allowed}")
        for key in p.tune_on:
            if key not in fields:
                raise self.error(f"protocol.tune_on.{key}", "is not a benchmark field", allowed)
            if key in same_shape:
                raise self.error(f"protocol.tune_on.{key}", "two_phase tunes on a scenario of the target's shape: "
                                                            "the same number of tasks and scenario", allowed)
            if f"benchmark.{key}" in spec.search:
                raise self.error(f"search.benchmark.{key}", "is searched, and protocol.tune_on sets it for the search",
                                 "one of the two")
        if (spec.base.get("benchmark") or {}).get("task_range") is not None:
            raise self.error("base.benchmark.task_range", "is set, but two_phase trains whole streams",
                             "null (or protocol: prefix)")
        if spec.reference.strategy is not None:
            raise self.error("reference.strategy", "the reference would train on tune_on's stream, while the "
                                                   "evaluation trains the target's", "null with two_phase")
        first = spec.first_values()
        try:
            ExperimentConfig.from_dict(_merged(spec.base, spec.active(spec.decoded(first))))
        except ConfigError:
            return  # not tune_on's fault: check_values names the bad field
        try:
            tuned = spec.trial_config(first).benchmark
        except ConfigError as error:
            key = error.field.removeprefix("benchmark.")
            raise self.error(f"protocol.tune_on.{key}" if key in p.tune_on else "protocol.tune_on",
                             error.message) from None
        if tuned == spec.evaluation_config(first, 0).benchmark:
            raise self.error("protocol.tune_on", f"{p.tune_on} gives the target's own benchmark: phase 1 would tune "
                                                 f"on the target", "values that differ from base.benchmark's")

    def reference(self, spec: SweepSpec) -> None:
        ref, objective = spec.reference, spec.objective
        needing = [m for m in (objective.metric, *objective.require) if m in NEEDS_REFERENCE]
        if ref.strategy is None:
            if needing:
                raise self.error("reference.strategy", f"the objective uses {needing[0]}, which is measured against "
                                                       f"a reference model's accuracy per task: name one",
                                 "joint, naive")
            if ref.lr is not None:
                raise self.error("reference.lr", "is set, but reference.strategy is null", "joint, naive")
            return
        varied = [k for k in spec.search if k.split(".")[0] in ("benchmark", "model")]
        if varied:
            raise self.error(f"search.{varied[0]}", "is searched, so trials would differ from the reference in "
                                                    "what a*_k measures", "reference.strategy: null, or a fixed value")
        if "train.lr" in spec.search and ref.lr is None:
            raise self.error("reference.lr", "train.lr is searched, so the reference needs learning rates of its "
                                             "own (the best per task is kept)", "a list, e.g. [0.1, 0.01, 0.001]")
        for lr in spec.reference_lrs():
            try:
                ExperimentConfig.from_dict(_merged(spec.reference_base(), {"train.lr": lr}))
            except ConfigError as error:
                raise self.error(f"reference ({ref.strategy}, lr {lr:g}): base.{error.field}", error.message) from None

    def selection(self, selection: Selection, search: dict[str, Distribution], algorithm: Algorithm) -> None:
        if not selection.finalists:
            return
        if "seed" in search:
            raise self.error("search.seed", "finalists train again on fresh seeds: the seed is not a "
                                            "hyperparameter to search", "selection.finalists: 0 to search seeds")
        trials = _trials(algorithm, search)
        if selection.finalists > trials:
            raise self.error("selection.finalists", f"{selection.finalists} finalists from {trials} trials",
                             f"0..{trials}")

    # -------------------------------------------------------------- search
    def search(self, search: dict[str, Distribution]) -> None:
        if not search and not isinstance(self.spec.protocol, Chf):
            raise self.error("search", *SweepSpec.shapes["search"])
        paths = config_paths()
        searchable = [p for p in paths if p not in NOT_SEARCHABLE]
        for key, d in search.items():
            where = f"search.{key}"
            if key in NOT_SEARCHABLE:
                raise self.error(where, "cannot be searched: a sweep loads one dataset, shares it between its "
                                        "trials, and counts time in tasks seen; write one sweep file per benchmark",
                                 "any other config field")
            if key not in paths:
                close = difflib.get_close_matches(str(key), searchable, n=3)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise self.error(where, f"is not a config field{hint}", ", ".join(searchable))
            self.distribution(where, d, field_kind(key))

    def distribution(self, where: str, d: Distribution, kind: str) -> None:
        if d.discrete:
            if len({repr(v) for v in d.values}) < len(d.values):
                raise self.error(f"{where}.values", f"has repeated values: {d.values!r}", "distinct values")
            return
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
            if d.q is not None:
                d.q = int(d.q)

    def check_values(self, spec: SweepSpec) -> ExperimentConfig:
        """Every candidate value of every distribution, with the others at their first value (and a
        conditional key's condition met), must make a valid ExperimentConfig. Candidate values are
        normalised by the config (types, ``"1e-3"`` strings). Returns the config with all first values."""
        search, conditions = spec.search, spec.conditions()
        first = {k: d.candidates()[0] for k, d in search.items()}
        try:
            config = spec.trial_config(first)
        except ConfigError as error:
            if error.field in search:
                raise self.invalid(error.field, search[error.field], first[error.field], error) from None
            raise self.error(f"base.{error.field}" if error.field != "<root>" else "base", error.message) from None
        for key, d in search.items():
            normalised = []
            for value in d.candidates():
                values = {**first, key: value}
                if key in conditions:  # checked where it exists
                    sibling, wanted = conditions[key]
                    values[sibling] = wanted
                try:
                    normalised.append(spec.trial_config(values).flat()[key])
                except ConfigError as error:
                    raise self.invalid(key, d, value, error) from None
            if d.discrete:
                d.values = normalised
            if key in conditions and d.dist == "grid":
                raise self.error(f"search.{key}", f"exists only when {conditions[key][0]} is "
                                                  f"{conditions[key][1]!r}: a grid over it would repeat the trials "
                                                  f"where it does not", "choice or a range (optuna, random)")
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

    def objective(self, objective: Objective, first: ExperimentConfig, search: dict[str, Distribution]) -> None:
        metric = objective.metric
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

    def algorithm(self, a: Algorithm, search: dict[str, Distribution], first: ExperimentConfig) -> None:
        if a.num_samples is None:
            if a.name != "grid":
                raise self.error("algorithm.num_samples", f"{a.name} needs the number of trials",
                                 "an integer >= 1")
            a.num_samples = 1
        if a.name != "optuna":
            for key in ("sampler", "n_startup_trials"):
                if getattr(a, key) is not None:
                    raise self.error(f"algorithm.{key}", f"is a setting of optuna, not of {a.name}",
                                     "num_samples, max_concurrent, seed, points_to_evaluate")
        else:
            a.sampler = a.sampler or "tpe"
            if a.n_startup_trials is not None and a.sampler != "tpe":
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

    def point(self, where: str, point, search: dict[str, Distribution], first: ExperimentConfig) -> None:
        if not isinstance(point, dict) or not point:
            raise self.error(where, f"must map search keys to values, got {point!r}", ", ".join(search))
        for key, value in point.items():
            if key not in search:
                raise self.error(f"{where}.{key}", "is not a key of the search space", ", ".join(search))
        spec, firsts = self.spec, {k: d.candidates()[0] for k, d in search.items()}
        for key, value in point.items():  # with the point's other values: a conditional key needs its condition
            d = search[key]
            try:
                value = point[key] = spec.trial_config({**firsts, **point, key: value}).flat()[key]
            except ConfigError as error:
                raise self.error(f"{where}.{key}", f"{value!r} makes an invalid config: {error}") from None
            if not d.contains(value):
                allowed = repr(d.values) if d.discrete else f"[{d.low}, {d.high}]"
                raise self.error(f"{where}.{key}", f"{value!r} is outside the search space", allowed)

    def scheduler(self, s: Scheduler, search: dict[str, Distribution], algorithm: Algorithm, n_tasks: int) -> None:
        grace_period = getattr(s, "grace_period", None)
        if grace_period is not None and grace_period > n_tasks:
            raise self.error("scheduler.grace_period", f"got {grace_period}",
                             f"tasks seen, 1..{n_tasks} (benchmark.n_tasks)")
        trials = _trials(algorithm, search)
        if s.waits_for and algorithm.max_concurrent is not None and algorithm.max_concurrent < trials:
            raise self.error("algorithm.max_concurrent", f"got {algorithm.max_concurrent} for {trials} trials; "
                                                         f"{s.name}'s trials wait, paused, at each milestone for "
                                                         f"{s.waits_for}, and a cap on trials counts the paused ones, "
                                                         f"so they would wait for {algorithm.max_concurrent} trials "
                                                         f"alone (the cluster's resources already bound how many run)",
                             f"null (or at least {trials}) with scheduler {s.name}")
        if isinstance(s, Pbt):
            self.pbt(s, search, algorithm, n_tasks)

    def pbt(self, s: Pbt, search: dict[str, Distribution], algorithm: Algorithm, n_tasks: int) -> None:
        if algorithm.name == "optuna":
            raise self.error("scheduler.name", "pbt explores by itself and cannot follow optuna's suggestions",
                             "algorithm random (the initial population) or grid with pbt")
        if s.perturbation_interval >= n_tasks:
            raise self.error("scheduler.perturbation_interval",
                             f"got {s.perturbation_interval}; pbt can only exploit between tasks",
                             f"1..{n_tasks - 1} tasks (benchmark.n_tasks is {n_tasks})")
        if s.burn_in_period >= n_tasks:
            raise self.error("scheduler.burn_in_period", f"got {s.burn_in_period}", f"0..{n_tasks - 1} tasks")
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

    def storage(self, storage: Storage, scheduler: Scheduler) -> None:
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
            storage.checkpoints_to_keep = 2  # 1 would force an experiment snapshot after every checkpoint

    def resources(self, r: Resources, first: ExperimentConfig, search: dict[str, Distribution]) -> None:
        if r.gpu > 1 and not float(r.gpu).is_integer():
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


__all__ = ["SweepSpec", "SpecError", "Distribution", "load_spec", "apply_override", "encode_value", "decode_value",
           "field_kind",
           "DISTRIBUTIONS", "OBJECTIVES", "SCHEDULERS", "REQUIRABLE", "OBJECTIVE_ATTR", "Requirement"]
