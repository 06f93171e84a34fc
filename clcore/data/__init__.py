"""Continual-learning benchmarks held as tensors on the training device.

`load_raw(config)` reads a dataset once (torchvision's own dataset classes: download when allowed)
into ``uint8`` tensors; `build_benchmark(config, raw, device)` turns it into a stream of `Task`s on
the device: class splits, pixel permutations and rotations are applied there, once, and batches
are index permutations into those tensors. Raw data is small and plain, so a sweep loads it once
and shares it between trials (Ray's object store); each trial builds its own tasks from it.

Targets follow the scenario: task- and domain-incremental targets are the class's index within
its task (0..k-1); class-incremental targets are ``task * k + index`` (task t owns head units
``[t*k, (t+1)*k)``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from clcore.config import BENCHMARK_CLASSES, SPLIT_BENCHMARKS, BenchmarkConfig

# Per-channel mean and std of the training images (pixel values in [0, 1]).
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synthetic": ((0.5,), (0.25,)),
}
SOURCE = {
    "permuted_mnist": "mnist", "rotated_mnist": "mnist", "split_mnist": "mnist",
    "split_fashion_mnist": "fashion_mnist", "split_cifar10": "cifar10", "split_cifar100": "cifar100",
    "synthetic": "synthetic",
}
# Files torchvision reads, relative to the data root (used to say what is missing).
EXPECTED_FILES = {
    "mnist": [f"MNIST/raw/{f}" for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")],
    "fashion_mnist": [f"FashionMNIST/raw/{f}" for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")],
    "cifar10": [f"cifar-10-batches-py/{f}" for f in
                ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")],
    "cifar100": [f"cifar-100-python/{f}" for f in ("train", "test", "meta")],
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not under the data root and downloading is off."""


@dataclass
class RawData:
    """A whole dataset as CPU tensors: images ``uint8 [N, C, H, W]``, labels ``int64 [N]``."""

    source: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    key: tuple = ()  # `raw_key` of the config `load_raw` read it for; () when built otherwise

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return NORMALISATION[self.source]


@dataclass
class Split:
    """Samples of one split on the device: ``x`` uint8 images, ``y`` targets, ``task_ids``."""

    x: torch.Tensor
    y: torch.Tensor
    task_ids: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    @staticmethod
    def concat(splits: list["Split"]) -> "Split":
        return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]),
                     torch.cat([s.task_ids for s in splits]))


@dataclass
class Task:
    id: int
    classes: tuple[int, ...]  # dataset labels in this task
    train: Split
    val: Split
    test: Split


@dataclass
class Benchmark:
    name: str
    scenario: str
    tasks: list[Task]
    input_shape: tuple[int, int, int]
    classes_per_task: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def view(self, start: int, stop: int) -> "Benchmark":
        """Tasks ``start..stop-1`` as a stream of their own, renumbered from 0 (task ids, and class-IL
        targets, so that heads and the incremental mask see a stream that starts there); the other
        tasks' data is not in it."""
        shift = start * self.classes_per_task if self.scenario == "class" else 0
        tasks = [Task(new, task.classes, *(Split(s.x, s.y - shift, s.task_ids - start)
                                           for s in (task.train, task.val, task.test)))
                 for new, task in enumerate(self.tasks[start:stop])]
        return replace(self, tasks=tasks)

    def visible(self, k: int) -> "Benchmark":
        """The whole stream with the data of tasks ``k..`` taken out (their splits empty): a run builds
        its model for every task and trains the first ``k`` alone; the others' accuracy is NaN."""
        def hidden(s: Split) -> Split:
            return Split(s.x[:0].clone(), s.y[:0].clone(), s.task_ids[:0].clone())  # no view of the data

        tasks = [task if task.id < k else Task(task.id, task.classes, *(hidden(s) for s in (task.train, task.val,
                                                                                            task.test)))
                 for task in self.tasks]
        return replace(self, tasks=tasks)


# ---------------------------------------------------------------------------------- loading
def load_raw(config: BenchmarkConfig) -> RawData:
    """Read the dataset behind ``config.name`` from ``config.data_dir`` (or ``$CLCORE_DATA_DIR``), marked
    with its `raw_key` (what a sweep checks before handing it to a trial)."""
    return replace(_read_raw(config), key=raw_key(config))


def _read_raw(config: BenchmarkConfig) -> RawData:
    source = SOURCE[config.name]
    if source == "synthetic":
        return synthetic_raw(config.seed)
    root = config.resolved_data_dir()
    missing = [f for f in EXPECTED_FILES[source] if not (root / f).exists()]
    if missing and not config.download:
        raise DatasetNotFoundError(
            f"{config.name}: dataset files missing under data root {str(root.resolve())!r} "
            f"(benchmark.data_dir or $CLCORE_DATA_DIR), and benchmark.download is false. "
            f"Missing: {', '.join(missing)}")
    cls = _dataset_class(source)
    root.mkdir(parents=True, exist_ok=True)
    train = cls(str(root), train=True, download=bool(missing))
    test = cls(str(root), train=False, download=False)
    return RawData(source, *_to_tensors(train), *_to_tensors(test))


def _dataset_class(source: str) -> type:
    """torchvision's dataset class for ``source``; for CIFAR, one that checks files exist, not their md5.

    torchvision's MNIST classes accept any file that exists (``check_integrity(path)`` with no md5), but
    ``CIFAR10/100.__init__`` calls ``_check_integrity()`` and ``_load_meta()``, which compare each file's
    md5 with the official release and raise "Dataset not found or corrupted" otherwise. We make CIFAR
    behave like MNIST: the subclass below clears the per-file md5s, so files that exist are read with
    torchvision's own pickle reader (a file in the wrong format still fails there). A download still goes
    through torchvision's ``download()``, which fetches the archive only when files are missing and
    verifies the archive's md5 (``tgz_md5``, untouched).
    """
    import torchvision.datasets as tvd

    if source in ("mnist", "fashion_mnist"):
        return {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[source]
    base = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[source]
    return type(base.__name__, (base,), {
        "train_list": [[name, None] for name, _ in base.train_list],
        "test_list": [[name, None] for name, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def raw_key(config: BenchmarkConfig) -> tuple:
    """The data `load_raw` returns for ``config``: configs with equal keys can share one `RawData`."""
    source = SOURCE[config.name]
    return (source, config.seed) if source == "synthetic" else (source,)


def _to_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    data = dataset.data
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # MNIST [N,H,W]; CIFAR [N,H,W,C]
    y = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return x.contiguous(), y


def synthetic_raw(seed: int = 0, per_class_train: int = 300, per_class_test: int = 60) -> RawData:
    """Ten classes of 8x8 images: a fixed random prototype per class plus pixel noise.

    Learnable in a few hundred steps by a small MLP, yet not separable by any single pixel; for fast tests.
    """
    g = torch.Generator().manual_seed(1000 + seed)
    prototypes = torch.rand(10, 1, 8, 8, generator=g)

    def sample(per_class: int):
        y = torch.arange(10).repeat_interleave(per_class)
        noise = 0.35 * torch.randn(len(y), 1, 8, 8, generator=g)
        x = ((prototypes[y] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        order = torch.randperm(len(y), generator=g)
        return x[order], y[order]

    return RawData("synthetic", *sample(per_class_train), *sample(per_class_test))


# ---------------------------------------------------------------------------------- building
def build_benchmark(config: BenchmarkConfig, raw: RawData, device: torch.device | str = "cpu") -> Benchmark:
    """The task stream ``config`` describes, as tensors on ``device``. Deterministic given ``config.seed``."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(config.seed)
    n_train = raw.y_train.shape[0]
    order = torch.randperm(n_train, generator=g)
    n_val = int(round(config.val_fraction * n_train))
    parts = {
        "train": (raw.x_train[order[n_val:]], raw.y_train[order[n_val:]]),
        "val": (raw.x_train[order[:n_val]], raw.y_train[order[:n_val]]),
        "test": (raw.x_test, raw.y_test),
    }
    parts = {k: (x.to(device), y.to(device)) for k, (x, y) in parts.items()}
    n_classes = BENCHMARK_CLASSES[config.name]
    k = config.classes_per_task

    if config.name in SPLIT_BENCHMARKS:
        if config.class_order is not None:
            class_order = list(config.class_order)
        elif config.shuffle_classes:
            class_order = torch.randperm(n_classes, generator=g).tolist()
        else:
            class_order = list(range(n_classes))
        transforms = [None] * config.n_tasks
        task_classes = [tuple(class_order[t * k:(t + 1) * k]) for t in range(config.n_tasks)]
    else:
        task_classes = [tuple(range(n_classes))] * config.n_tasks
        if config.name == "permuted_mnist":
            n_pixels = raw.x_train[0].numel()
            transforms = [("permute", torch.randperm(n_pixels, generator=g).to(device)) for _ in range(config.n_tasks)]
        else:
            angles = config.rotations or [t * 180.0 / config.n_tasks for t in range(config.n_tasks)]
            transforms = [("rotate", float(a)) for a in angles]

    tasks = []
    for t, classes in enumerate(task_classes):
        splits = {}
        for name, (x, y) in parts.items():
            x_t, y_t = _task_split(x, y, classes, device)
            if name == "train" and config.train_samples_per_task is not None:
                x_t, y_t = x_t[:config.train_samples_per_task], y_t[:config.train_samples_per_task]
            x_t = _apply_transform(x_t, transforms[t])
            target = y_t + t * k if config.scenario == "class" else y_t
            splits[name] = Split(x_t, target, torch.full_like(y_t, t))
        tasks.append(Task(t, classes, splits["train"], splits["val"], splits["test"]))

    mean, std = raw.normalisation
    if not config.normalize:  # the model's (x / 255 - mean) / std is then x / 255
        mean, std = tuple(0.0 for _ in mean), tuple(1.0 for _ in std)
    benchmark = Benchmark(config.name, config.scenario, tasks, tuple(raw.x_train.shape[1:]), k, mean, std)
    if config.task_range is not None:
        return benchmark.view(*config.task_range)
    return benchmark if config.visible_tasks is None else benchmark.visible(config.visible_tasks)


def load_benchmark(config: BenchmarkConfig, device: torch.device | str = "cpu") -> Benchmark:
    return build_benchmark(config, load_raw(config), device)


def _task_split(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples whose label is in ``classes``, with labels replaced by their index in ``classes``."""
    size = max(max(classes), int(y.max()) if y.numel() else 0) + 1  # y is empty when val_fraction is 0
    lookup = torch.full((size,), -1, dtype=torch.int64, device=device)
    lookup[torch.tensor(classes, device=device)] = torch.arange(len(classes), device=device)
    local = lookup[y]
    keep = local >= 0
    return x[keep], local[keep]


def _apply_transform(x: torch.Tensor, transform) -> torch.Tensor:
    if transform is None:
        return x
    kind, arg = transform
    if kind == "permute":
        return x.flatten(1)[:, arg].view_as(x)
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    if arg == 0.0:
        return x
    rotated = rotate(x.float(), arg, interpolation=InterpolationMode.BILINEAR)
    return rotated.round().clamp(0, 255).to(torch.uint8)


__all__ = ["RawData", "Split", "Task", "Benchmark", "DatasetNotFoundError", "load_raw", "build_benchmark",
           "load_benchmark", "synthetic_raw", "raw_key", "EXPECTED_FILES"]
