"""ExperimentConfig: the single source of truth for one continual-learning run.

A config is four typed sections plus a seed::

    benchmark:  what data, how many tasks, which scenario
    model:      network and head
    strategy:   a strategy's name and its hyperparameters (each strategy declares its own: clcore.params)
    train:      optimiser, epochs (or steps per task), batch size, device

`ExperimentConfig.from_dict` / `from_yaml` reject unknown keys and bad values before any
training starts, with a `ConfigError` that names the field (as a dotted path such as
``strategy.lambda``) and the allowed values. `to_dict` / `to_yaml` round-trip exactly.
Fields are addressed by dotted paths everywhere (YAML, ``--set``, sweep search spaces);
``config.strategy.lambda_`` reads the strategy's ``lambda``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from clcore.params import ConfigError, RuleError, coerce
from clcore.strategies import catalogue


BENCHMARKS = (
    "permuted_mnist",
    "rotated_mnist",
    "split_mnist",
    "split_fashion_mnist",
    "split_cifar10",
    "split_cifar100",
    "synthetic",
)
# Scenarios each benchmark supports. Permuted and rotated MNIST are domain-incremental
# benchmarks (every task has the same ten labels); class-IL there means 10 * n_tasks classes.
BENCHMARK_SCENARIOS = {
    "permuted_mnist": ("domain", "class"),
    "rotated_mnist": ("domain", "class"),
    "split_mnist": ("task", "domain", "class"),
    "split_fashion_mnist": ("task", "domain", "class"),
    "split_cifar10": ("task", "domain", "class"),
    "split_cifar100": ("task", "domain", "class"),
    "synthetic": ("task", "domain", "class"),
}
# Classes in the underlying dataset; split benchmarks divide these among tasks.
BENCHMARK_CLASSES = {
    "permuted_mnist": 10,
    "rotated_mnist": 10,
    "split_mnist": 10,
    "split_fashion_mnist": 10,
    "split_cifar10": 10,
    "split_cifar100": 100,
    "synthetic": 10,
}
SPLIT_BENCHMARKS = ("split_mnist", "split_fashion_mnist", "split_cifar10", "split_cifar100", "synthetic")
SCENARIOS = ("task", "domain", "class")
MODELS = ("mlp", "cnn", "resnet18")
HEADS = ("auto", "multi", "single", "incremental")
HEAD_FOR_SCENARIO = {"task": "multi", "domain": "single", "class": "incremental"}
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
# Training fields PBT may change in a running trial (strategies mark theirs in their `Params`): they
# take effect when training continues from a task checkpoint, whose state keeps its shape.
MUTABLE = {"mutable": True}


def default_data_dir() -> str:
    """``$CLCORE_DATA_DIR`` when set, else ``./data``."""
    return os.environ.get("CLCORE_DATA_DIR", "data")


def _require(cond: bool, field_path: str, message: str, allowed: Optional[str] = None) -> None:
    if not cond:
        raise ConfigError(field_path, message, allowed)


def _rule(cond: bool, field_path: str, allowed: str, value) -> None:
    """The field's own rule: ``<field>: must be <allowed>, got <value>``, with ``allowed`` as data."""
    if not cond:
        raise RuleError(field_path, f"must be {allowed}, got {value!r}", allowed)


def _one_of(value, allowed, field_path: str) -> None:
    if value not in allowed:
        raise RuleError(field_path, f"unknown value {value!r}", ", ".join(map(str, allowed)))


@dataclass
class BenchmarkConfig:
    name: str = "split_mnist"
    scenario: str = "task"
    n_tasks: int = 5
    seed: int = 0
    class_order: Optional[list[int]] = None
    shuffle_classes: bool = False
    val_fraction: float = 0.1
    train_samples_per_task: Optional[int] = None
    rotations: Optional[list[float]] = None
    # true: inputs standardised with the training images' per-channel mean and std; false: pixels in
    # [0, 1] as they are (van de Ven & Tolias's code; a Fisher over other inputs, so their lambda needs it)
    normalize: bool = True
    # [start, stop): train and evaluate tasks start..stop-1 of the stream alone, renumbered from 0 (a
    # selection protocol's view: the other tasks' data never reaches the run); null: every task
    task_range: Optional[list[int]] = None
    # k: the first k tasks' data alone, the model built for the whole stream (its heads, its class-IL
    # units); the later tasks are neither trained nor evaluated (their accuracy NaN): a per-task
    # protocol's view at task k - 1, which continues the stream where the previous view stopped
    visible_tasks: Optional[int] = None
    data_dir: Optional[str] = None
    download: bool = True

    def validate(self) -> None:
        p = "benchmark."
        _one_of(self.name, BENCHMARKS, p + "name")
        _one_of(self.scenario, SCENARIOS, p + "scenario")
        _require(self.scenario in BENCHMARK_SCENARIOS[self.name], p + "scenario",
                 f"{self.name} does not support scenario {self.scenario!r} (its tasks share one label set, so "
                 f"there are no task-specific heads)", ", ".join(BENCHMARK_SCENARIOS[self.name]))
        _require(isinstance(self.n_tasks, int) and self.n_tasks >= 1, p + "n_tasks",
                 f"must be an integer >= 1, got {self.n_tasks!r}")
        n_classes = BENCHMARK_CLASSES[self.name]
        if self.name in SPLIT_BENCHMARKS:
            _require(self.n_tasks <= n_classes // 2 and n_classes % self.n_tasks == 0, p + "n_tasks",
                     f"{self.name} has {n_classes} classes: n_tasks must divide them into tasks of at "
                     f"least 2 classes (allowed: {[d for d in range(1, n_classes + 1) if n_classes % d == 0 and n_classes // d >= 2]}), "
                     f"got {self.n_tasks}")
        if self.class_order is not None:
            _require(sorted(self.class_order) == list(range(n_classes)), p + "class_order",
                     f"must be a permutation of 0..{n_classes - 1}, got {self.class_order!r}")
            _require(not self.shuffle_classes, p + "shuffle_classes",
                     "cannot be true together with an explicit class_order")
        _require(0.0 <= self.val_fraction < 1.0, p + "val_fraction",
                 f"must be in [0, 1), got {self.val_fraction!r}")
        if self.train_samples_per_task is not None:
            _require(self.train_samples_per_task >= 1, p + "train_samples_per_task",
                     f"must be >= 1 or null, got {self.train_samples_per_task!r}")
        if self.rotations is not None:
            _require(self.name == "rotated_mnist", p + "rotations", "only applies to rotated_mnist")
            _require(len(self.rotations) == self.n_tasks, p + "rotations",
                     f"needs one angle per task ({self.n_tasks}), got {len(self.rotations)}")
        if self.task_range is not None:
            _require(isinstance(self.task_range, list) and len(self.task_range) == 2 and
                     all(isinstance(v, int) for v in self.task_range) and
                     0 <= self.task_range[0] < self.task_range[1] <= self.n_tasks, p + "task_range",
                     f"must be [start, stop] with 0 <= start < stop <= n_tasks ({self.n_tasks}), got {self.task_range!r}",
                     f"e.g. [0, {min(2, self.n_tasks)}] (the first tasks) or null (all)")
        if self.visible_tasks is not None:
            _require(isinstance(self.visible_tasks, int) and 1 <= self.visible_tasks <= self.n_tasks,
                     p + "visible_tasks", f"must be an integer in 1..n_tasks ({self.n_tasks}), got {self.visible_tasks!r}",
                     f"1..{self.n_tasks}, or null (every task)")
            _require(self.task_range is None, p + "visible_tasks", "cannot be set together with task_range (a "
                     "stream of its own, renumbered): visible_tasks counts the whole stream's tasks",
                     "one of task_range and visible_tasks, or neither")
        if self.data_dir is not None:
            _require(Path(self.data_dir).expanduser().is_dir() or self.download, p + "data_dir",
                     f"directory {self.data_dir!r} does not exist and benchmark.download is false",
                     "an existing directory, or download: true to create it and download into it")

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir if self.data_dir is not None else default_data_dir()).expanduser()

    @property
    def tasks_run(self) -> int:
        """Tasks a run trains: ``n_tasks``, those of ``task_range``, or the ``visible_tasks``."""
        if self.task_range is not None:
            return self.task_range[1] - self.task_range[0]
        return self.n_tasks if self.visible_tasks is None else self.visible_tasks

    @property
    def classes_per_task(self) -> int:
        """Split benchmarks divide their classes between the tasks; the others give every task all of them."""
        n_classes = BENCHMARK_CLASSES[self.name]
        return n_classes // self.n_tasks if self.name in SPLIT_BENCHMARKS else n_classes

    def chance_on_task(self, task: int) -> float:
        """A guess's accuracy on task ``task`` (0-based) right after it is learned: one over the classes the
        head chooses among (class-IL: every class seen so far)."""
        return 1.0 / (self.classes_per_task * (task + 1 if self.scenario == "class" else 1))


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.0
    head: str = "auto"

    def validate(self, scenario: str) -> None:
        p = "model."
        _one_of(self.name, MODELS, p + "name")
        _one_of(self.head, HEADS, p + "head")
        _require(all(isinstance(h, int) and h >= 1 for h in self.hidden_sizes), p + "hidden_sizes",
                 f"must be a list of integers >= 1, got {self.hidden_sizes!r}")
        _require(0.0 <= self.dropout < 1.0, p + "dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.head != "auto":
            needed = HEAD_FOR_SCENARIO[scenario]
            _require(self.head == needed, p + "head",
                     f"{self.head!r} does not fit scenario {scenario!r}",
                     f"'auto' or {needed!r} (multi: task, single: domain, incremental: class)")

    def resolved_head(self, scenario: str) -> str:
        return HEAD_FOR_SCENARIO[scenario] if self.head == "auto" else self.head


@dataclass
class StrategyConfig:
    """A strategy's name and its hyperparameters: those its class declares (`clcore.params`), checked
    and completed with defaults by `validate`. ``config.strategy.lambda_`` reads ``params["lambda"]``
    (None for a parameter the strategy does not have)."""

    name: str = "naive"
    params: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str):
        return self.params.get(key)

    def __getattr__(self, attribute: str):
        key = "lambda" if attribute == "lambda_" else attribute
        if not attribute.startswith("__") and key in catalogue.all_params():
            return self.params.get(key)
        raise AttributeError(f"StrategyConfig has no attribute {attribute!r}")

    @classmethod
    def from_dict(cls, data, prefix: str = "strategy.") -> "StrategyConfig":
        """The section as written: its name known, every key some strategy's parameter; not yet validated."""
        if not isinstance(data, dict):
            raise ConfigError(prefix.rstrip("."), f"must be a mapping, got {data!r}")
        data = dict(data)
        name = data.pop("name", cls.name)
        declared = catalogue.info(name, prefix + "name").params
        for key, value in data.items():
            if key not in catalogue.all_params():
                raise ConfigError(prefix + str(key), "unknown key",
                                  f"name, {', '.join(declared.names)}" if declared.names else "name")
        return cls(name, data)  # validated with the rest of the config (`ExperimentConfig.validate`)

    def validate(self, prefix: str = "strategy.") -> "StrategyConfig":
        self.params = catalogue.check_params(self.name, self.params, prefix)
        return self


@dataclass
class TrainConfig:
    optimizer: str = "sgd"
    lr: float = field(default=0.01, metadata=MUTABLE)
    momentum: float = field(default=0.0, metadata=MUTABLE)
    weight_decay: float = field(default=0.0, metadata=MUTABLE)
    epochs: int = field(default=1, metadata=MUTABLE)
    steps_per_task: Optional[int] = field(default=None, metadata=MUTABLE)  # replaces epochs when set
    batch_size: int = field(default=64, metadata=MUTABLE)
    eval_batch_size: int = 1024
    reset_optimizer: bool = True
    device: str = "auto"
    amp: bool = False

    def validate(self) -> None:
        p = "train."
        _one_of(self.optimizer, OPTIMIZERS, p + "optimizer")
        _rule(math.isfinite(self.lr) and self.lr > 0, p + "lr", "a finite number > 0", self.lr)
        _rule(self.momentum >= 0, p + "momentum", "a number >= 0", self.momentum)
        _rule(self.weight_decay >= 0, p + "weight_decay", "a number >= 0", self.weight_decay)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            _rule(isinstance(value, int) and value >= 1, p + name, "an integer >= 1", value)
        _rule(self.steps_per_task is None or (isinstance(self.steps_per_task, int) and self.steps_per_task >= 1),
              p + "steps_per_task", "an integer >= 1, or null (train by epochs)", self.steps_per_task)
        _require(self.steps_per_task is None or self.epochs == 1, p + "epochs",
                 f"train.steps_per_task ({self.steps_per_task}) replaces train.epochs: a task trains that many "
                 f"steps, so epochs must stay at its default 1, got {self.epochs!r}",
                 "1 with steps_per_task, or steps_per_task null")
        _rule(self.device in DEVICES or self.device.startswith("cuda:"), p + "device", "auto, cpu, cuda, cuda:N",
              self.device)
        _require(self.optimizer == "sgd" or self.momentum == 0, p + "momentum",
                 f"is SGD's momentum and does nothing with optimizer {self.optimizer!r} (Adam's moments are "
                 f"its betas), got {self.momentum!r}", "0 with adam, or optimizer sgd")
        if self.device == "cpu":
            self.check_amp("cpu")

    def check_amp(self, device_type: str) -> None:
        """``amp`` needs a CUDA device: ``device: cpu`` (at validation) or the device a run resolved
        (``device: auto`` on a CPU-only machine) has none."""
        _require(not self.amp or device_type == "cuda", "train.amp",
                 f"bf16 autocast runs on CUDA only, and the device is {device_type!r}",
                 "false with device cpu or on a machine without a GPU, or device auto/cuda on a machine with one")


@dataclass
class ExperimentConfig:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    # one mapping per task trained, of the values that task trains with ({"train.lr": 0.01,
    # "strategy.lambda": 100.0}), set at its start on top of the fields above: `mutable_paths` alone
    # (what can change between tasks while the weights, the optimiser's moments and the strategy's
    # state carry on); null: the same values throughout. A per_task protocol's choice.
    schedule: Optional[list[dict]] = None

    # ---------------------------------------------------------------- validation
    def validate(self) -> "ExperimentConfig":
        """Check every field; raise `ConfigError` naming the first bad one. Returns self."""
        _require(isinstance(self.seed, int), "seed", f"must be an integer, got {self.seed!r}")
        self.benchmark.validate()
        self.model.validate(self.benchmark.scenario)
        self.strategy.validate()
        self.train.validate()
        if self.schedule is not None:
            tasks = self.benchmark.tasks_run
            _require(len(self.schedule) == tasks, "schedule",
                     f"needs one mapping per task trained ({tasks}), got {len(self.schedule)}")
            allowed = mutable_paths()
            for t, values in enumerate(self.schedule):
                _require(isinstance(values, dict), f"schedule[{t}]", f"must be a mapping, got {values!r}")
                for key in values:
                    _require(key in allowed, f"schedule[{t}].{key}", "cannot change between tasks (the model, "
                             "the stream, the optimiser and the seed are fixed once task 0 starts)",
                             ", ".join(allowed))
                try:
                    self.at_task(t)
                except ConfigError as error:
                    raise ConfigError(f"schedule[{t}].{error.field}", error.message) from None
        return self

    def at_task(self, t: int) -> "ExperimentConfig":
        """The config task ``t`` trains with: ``schedule[t]`` applied (itself when there is no schedule)."""
        if self.schedule is None:
            return self
        data = {**self.to_dict(), "schedule": None}
        for path, value in self.schedule[t].items():
            set_path(data, path, value)
        return ExperimentConfig.from_dict(data)

    # ---------------------------------------------------------------- dict / yaml
    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        """Build and validate a config; unknown keys and wrong types raise `ConfigError`."""
        return build_typed(cls, data or {}, "").validate()

    def to_dict(self) -> dict:
        """Plain dict (YAML-ready). Strategy fields that do not apply are left out, and so is a null schedule."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "schedule" and value is None:
                continue
            if f.name == "strategy":
                out["strategy"] = {"name": value.name, **copy.deepcopy(value.params)}
            elif dataclasses.is_dataclass(value):
                out[f.name] = {g.name: copy.deepcopy(getattr(value, g.name)) for g in dataclasses.fields(value)}
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "ExperimentConfig":
        if _is_path(path_or_text):
            data = read_yaml_file(path_or_text)
        else:
            data = parse_yaml(str(path_or_text))
        if data is not None and not isinstance(data, dict):
            raise ConfigError("<root>", "a config file must be a YAML mapping")
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    # ---------------------------------------------------------------- dotted paths
    def with_overrides(self, overrides: dict[str, Any]) -> "ExperimentConfig":
        """A new validated config with ``{"train.lr": 0.1, ...}`` applied.

        Changing ``strategy.name`` starts the strategy section afresh: the old strategy's parameters
        do not carry over (they would not fit, or mean something else); the new one's come from the
        other overrides or its defaults.
        """
        data = self.to_dict()
        if overrides.get("strategy.name", self.strategy.name) != self.strategy.name:
            data["strategy"] = {}
        for path, value in overrides.items():
            set_path(data, path, value)
        return ExperimentConfig.from_dict(data)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.01, "strategy.lambda": 1.0, ...}`` for logging as parameters."""
        return flatten(self.to_dict())


class YamlFileError(ConfigError):
    """A file is not UTF-8 YAML, or a mapping in it repeats a key. ``field`` is ``<file>`` or the
    dotted path of the repeated key; ``line`` is 1-based (None when unknown)."""

    def __init__(self, field_path: str, message: str, line: Optional[int] = None):
        super().__init__(field_path, message)
        self.line = line

    def __reduce__(self):
        return type(self), (self.field, self.message, self.line)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping that repeats a key is an error, not last-wins
    (keys merged in with ``<<`` may still be overridden, as YAML's merge key intends)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: explicit keys may override it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error follows
                break
            if not repeated:
                seen[key] = key_node.start_mark.line + 1
            else:
                first = seen[key]
                where = ".".join(map(str, [*_parents(self, node), key]))
                raise YamlFileError(where, f"key {key!r} appears twice, at lines {first} and "
                                           f"{key_node.start_mark.line + 1}; allowed: each key once per mapping",
                                    key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


def _parents(loader: _UniqueKeyLoader, node) -> list:
    """The keys leading from the document's root to mapping ``node`` (for the error's field)."""
    path: list = []

    def walk(current, trail) -> bool:
        if current is node:
            path.extend(trail)
            return True
        if isinstance(current, yaml.MappingNode):
            return any(walk(v, [*trail, k.value]) for k, v in current.value)
        if isinstance(current, yaml.SequenceNode):
            return any(walk(v, [*trail[:-1], f"{trail[-1]}[{i}]"] if trail else [f"[{i}]"])
                       for i, v in enumerate(current.value))
        return False

    root = getattr(loader, "_root", None)
    if root is not None:
        walk(root, [])
    return path


def parse_yaml(text: str):
    """``text`` as YAML (safe types only); a repeated key in any mapping raises `YamlFileError`,
    so a second ``scheduler:`` cannot silently replace the first."""
    loader = _UniqueKeyLoader(text)
    try:
        loader._root = loader.get_single_node()
        return loader.construct_document(loader._root) if loader._root is not None else None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path):
    """The YAML document in file ``path``. Bytes that are not UTF-8 raise `YamlFileError` naming the
    line and byte offset; repeated keys too (see `parse_yaml`). `yaml.YAMLError` passes through."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise YamlFileError("<file>", f"is not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} "
                                      f"(line {line}) cannot be decoded; allowed: a UTF-8 encoded YAML file",
                            line) from None
    return parse_yaml(text)


def _is_path(value) -> bool:
    """A Path, or a one-line string naming a file (``*.yaml`` / ``*.yml`` even when missing)."""
    if isinstance(value, Path):
        return True
    return "\n" not in value and (value.endswith((".yaml", ".yml")) or Path(value).is_file())


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def config_paths() -> dict[str, type]:
    """Every settable dotted path with its value type (strategy parameters included)."""
    out = {"seed": int, "schedule": Optional[list[dict]]}
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in out:
            continue
        section = typing.get_type_hints(ExperimentConfig)[f.name]
        if section is StrategyConfig:
            out["strategy.name"] = str
            out.update({f"strategy.{p.name}": Optional[p.kind] if p.nullable else p.kind
                        for p in catalogue.all_params().values()})
            continue
        hints = typing.get_type_hints(section)
        for g in dataclasses.fields(section):
            out[f"{f.name}.{g.name}"] = hints[g.name]
    return out


def mutable_paths() -> tuple[str, ...]:
    """The dotted paths PBT may change in a running trial: training fields marked `MUTABLE` and
    strategy parameters declared ``mutable``."""
    train = tuple(f"train.{f.name}" for f in dataclasses.fields(TrainConfig) if f.metadata.get("mutable"))
    return train + catalogue.mutable()


def set_path(data: dict, path: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``path == "a.b"``; unknown paths raise `ConfigError`."""
    known = config_paths()
    if path not in known:
        raise ConfigError(path, f"is not a config field; fields: {', '.join(sorted(known))}")
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.1"`` -> ``("train.lr", 0.1)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key=value, e.g. train.lr=0.1")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


# ---------------------------------------------------------------- typed construction
def build_typed(cls, data: dict, prefix: str = ""):
    """Dataclass ``cls`` from a mapping: unknown keys and wrong types raise `ConfigError` naming
    ``prefix + key``. Not validated beyond types (callers run their own ``validate``)."""
    if cls is StrategyConfig:
        return StrategyConfig.from_dict(data, prefix)
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", f"must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(prefix + str(unknown[0]), "unknown key", ", ".join(names))
    return cls(**{key: _coerce(hints[key], data[key], prefix + key) for key in names if key in data})


def _coerce(hint, value, path: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_typed(hint, value, path + ".")
    if origin is typing.Union or str(origin) == "types.UnionType":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"must be a list, got {value!r}")
        return [_coerce(args[0], v, path) for v in value]
    return coerce(hint, value, path)
