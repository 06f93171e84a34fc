"""ExperimentConfig: the single source of truth for one continual-learning run.

A config is four typed sections plus a seed::

    benchmark:  what data, how many tasks, which scenario
    model:      network and head
    strategy:   naive | joint | ewc | rwalk and their hyperparameters
    train:      optimiser, epochs, batch size, device

`ExperimentConfig.from_dict` / `from_yaml` reject unknown keys and bad values before any
training starts, with a `ConfigError` that names the field (as a dotted path such as
``strategy.lambda``) and the allowed values. `to_dict` / `to_yaml` round-trip exactly.
Fields are addressed by dotted paths everywhere (YAML, ``--set``, sweep search spaces);
the strategy's ``lambda`` is stored in the attribute ``lambda_``.
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


class ConfigError(ValueError):
    """A config field has a bad value. ``field`` is the dotted path of the field."""

    def __init__(self, field_path: str, message: str):
        self.field = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}")

    def __reduce__(self):  # picklable (a sweep trial's error travels from a Ray worker to the driver)
        return type(self), (self.field, self.message)


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
STRATEGIES = ("naive", "joint", "ewc", "rwalk")
EWC_MODES = ("separate", "online")
FISHER_ESTIMATORS = ("exact", "empirical", "sampled", "batched")
RWALK_SCORE_CLIPS = ("average", "interval")  # see clcore/strategies/rwalk.py
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")

# Strategy parameters that each strategy accepts (besides ``name``).
STRATEGY_PARAMS = {
    "naive": (),
    "joint": (),
    "ewc": ("lambda", "mode", "decay_factor", "fisher", "fisher_samples", "fisher_batch_size",
            "keep_importance_data"),
    "rwalk": ("lambda", "alpha", "delta_t", "score_clip"),
}


def default_data_dir() -> str:
    """``$CLCORE_DATA_DIR`` when set, else ``./data``."""
    return os.environ.get("CLCORE_DATA_DIR", "data")


def _require(cond: bool, field_path: str, message: str) -> None:
    if not cond:
        raise ConfigError(field_path, message)


def _one_of(value, allowed, field_path: str) -> None:
    _require(value in allowed, field_path,
             f"unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")


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
    data_dir: Optional[str] = None
    download: bool = True

    def validate(self) -> None:
        p = "benchmark."
        _one_of(self.name, BENCHMARKS, p + "name")
        _one_of(self.scenario, SCENARIOS, p + "scenario")
        _require(self.scenario in BENCHMARK_SCENARIOS[self.name], p + "scenario",
                 f"{self.name} does not support scenario {self.scenario!r} (its tasks share one label set, so "
                 f"there are no task-specific heads); allowed: {', '.join(BENCHMARK_SCENARIOS[self.name])}")
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
        if self.data_dir is not None:
            _require(Path(self.data_dir).expanduser().is_dir() or self.download, p + "data_dir",
                     f"directory {self.data_dir!r} does not exist and benchmark.download is false; "
                     f"allowed: an existing directory, or download: true to create it and download into it")

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir if self.data_dir is not None else default_data_dir()).expanduser()


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
                     f"{self.head!r} does not fit scenario {scenario!r}; allowed: 'auto' or {needed!r} "
                     f"(multi: task, single: domain, incremental: class)")

    def resolved_head(self, scenario: str) -> str:
        return HEAD_FOR_SCENARIO[scenario] if self.head == "auto" else self.head


@dataclass
class StrategyConfig:
    """Strategy and its hyperparameters; only the ones in ``STRATEGY_PARAMS[name]`` may be set."""

    name: str = "naive"
    lambda_: Optional[float] = None
    mode: Optional[str] = None
    decay_factor: Optional[float] = None
    fisher: Optional[str] = None
    fisher_samples: Optional[int] = None
    fisher_batch_size: Optional[int] = None
    keep_importance_data: Optional[bool] = None
    alpha: Optional[float] = None
    delta_t: Optional[int] = None
    score_clip: Optional[str] = None

    # Defaults filled in by `with_defaults` for the fields a strategy accepts.
    DEFAULTS: typing.ClassVar[dict] = {
        "lambda": 1.0, "mode": "separate", "decay_factor": None, "fisher": "empirical",
        "fisher_samples": None, "fisher_batch_size": 256, "keep_importance_data": False,
        "alpha": 0.9, "delta_t": 10, "score_clip": "average",
    }

    def get(self, key: str):
        return getattr(self, "lambda_" if key == "lambda" else key)

    def with_defaults(self) -> None:
        for key in STRATEGY_PARAMS.get(self.name, ()):
            if self.get(key) is None and self.DEFAULTS[key] is not None:
                setattr(self, "lambda_" if key == "lambda" else key, self.DEFAULTS[key])

    def validate(self) -> None:
        p = "strategy."
        _one_of(self.name, STRATEGIES, p + "name")
        accepted = STRATEGY_PARAMS[self.name]
        for key in STRATEGY_PARAMS["ewc"] + STRATEGY_PARAMS["rwalk"]:
            if key not in accepted and self.get(key) is not None:
                raise ConfigError(p + key, f"is not a parameter of strategy {self.name!r}; its parameters: "
                                           f"{', '.join(accepted) or 'none'}")
        if "lambda" in accepted:
            lam = self.lambda_
            _require(isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0, p + "lambda",
                     f"must be a finite number > 0, got {lam!r}")
        if self.name == "ewc":
            _one_of(self.mode, EWC_MODES, p + "mode")
            if self.mode == "online":
                _require(self.decay_factor is not None and 0.0 < self.decay_factor <= 1.0, p + "decay_factor",
                         f"online EWC needs decay_factor in (0, 1], got {self.decay_factor!r}")
            else:
                _require(self.decay_factor is None, p + "decay_factor",
                         "only applies to mode 'online' (separate mode keeps one penalty per task)")
            _one_of(self.fisher, FISHER_ESTIMATORS, p + "fisher")
            if self.fisher_samples is not None:
                _require(isinstance(self.fisher_samples, int) and self.fisher_samples >= 1, p + "fisher_samples",
                         f"must be an integer >= 1 or null (all samples), got {self.fisher_samples!r}")
            _require(isinstance(self.fisher_batch_size, int) and self.fisher_batch_size >= 1,
                     p + "fisher_batch_size", f"must be an integer >= 1, got {self.fisher_batch_size!r}")
        if self.name == "rwalk":
            _require(self.alpha is not None and 0.0 <= self.alpha <= 1.0, p + "alpha",
                     f"must be in [0, 1], got {self.alpha!r}")
            _require(isinstance(self.delta_t, int) and self.delta_t >= 1, p + "delta_t",
                     f"must be an integer >= 1, got {self.delta_t!r}")
            _one_of(self.score_clip, RWALK_SCORE_CLIPS, p + "score_clip")


@dataclass
class TrainConfig:
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 64
    eval_batch_size: int = 1024
    reset_optimizer: bool = True
    device: str = "auto"
    amp: bool = False

    def validate(self) -> None:
        p = "train."
        _one_of(self.optimizer, OPTIMIZERS, p + "optimizer")
        _require(math.isfinite(self.lr) and self.lr > 0, p + "lr", f"must be a finite number > 0, got {self.lr!r}")
        _require(self.momentum >= 0, p + "momentum", f"must be >= 0, got {self.momentum!r}")
        _require(self.weight_decay >= 0, p + "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, p + name,
                     f"must be an integer >= 1, got {value!r}")
        _require(self.device in DEVICES or self.device.startswith("cuda:"), p + "device",
                 f"unknown device {self.device!r}; allowed: auto, cpu, cuda, cuda:N")
        _require(self.optimizer == "sgd" or self.momentum == 0, p + "momentum",
                 f"is SGD's momentum and does nothing with optimizer {self.optimizer!r} (Adam's moments are "
                 f"its betas), got {self.momentum!r}; allowed: 0 with adam, or optimizer sgd")
        if self.device == "cpu":
            self.check_amp("cpu")

    def check_amp(self, device_type: str) -> None:
        """``amp`` needs a CUDA device: ``device: cpu`` (at validation) or the device a run resolved
        (``device: auto`` on a CPU-only machine) has none."""
        _require(not self.amp or device_type == "cuda", "train.amp",
                 f"bf16 autocast runs on CUDA only, and the device is {device_type!r}; allowed: false with device "
                 f"cpu or on a machine without a GPU, or device auto/cuda on a machine with one")


@dataclass
class ExperimentConfig:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    # ---------------------------------------------------------------- validation
    def validate(self) -> "ExperimentConfig":
        """Check every field; raise `ConfigError` naming the first bad one. Returns self."""
        _require(isinstance(self.seed, int), "seed", f"must be an integer, got {self.seed!r}")
        self.benchmark.validate()
        self.model.validate(self.benchmark.scenario)
        self.strategy.validate()
        self.train.validate()
        return self

    # ---------------------------------------------------------------- dict / yaml
    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        """Build and validate a config; unknown keys and wrong types raise `ConfigError`."""
        config = build_typed(cls, data or {}, "")
        config.strategy.with_defaults()
        return config.validate()

    def to_dict(self) -> dict:
        """Plain dict (YAML-ready). Strategy fields that do not apply are left out."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "strategy":
                out["strategy"] = {"name": value.name, **{k: value.get(k) for k in STRATEGY_PARAMS[value.name]}}
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
    out = {"seed": int}
    for f in dataclasses.fields(ExperimentConfig):
        if f.name == "seed":
            continue
        section = typing.get_type_hints(ExperimentConfig)[f.name]
        hints = typing.get_type_hints(section)
        for g in dataclasses.fields(section):
            name = "lambda" if g.name == "lambda_" else g.name
            out[f"{f.name}.{name}"] = hints[g.name]
    return out


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
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", f"must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {("lambda" if f.name == "lambda_" else f.name): f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(prefix + str(unknown[0]),
                          f"unknown key; allowed keys here: {', '.join(names)}")
    kwargs = {}
    for key, attr in names.items():
        if key not in data:
            continue
        kwargs[attr] = _coerce(hints[attr], data[key], prefix + key)
    return cls(**kwargs)


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
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(path, f"must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                raise ConfigError(path, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"must be a string, got {value!r}")
        return value
    return value
