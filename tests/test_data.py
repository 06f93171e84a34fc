"""Benchmarks: task splits, permutations, rotations, validation carving, seeds; loading real files.

Most tests build benchmarks from small hand-made `RawData` whose pixels encode what we need to check
(the sample's index, or the pixel's own position), so each property is checked exactly. Real MNIST
tests skip when the data is absent; CIFAR loaders are tested on tiny files written here in the real
CIFAR pickle format.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from clcore.config import BenchmarkConfig, ConfigError, ExperimentConfig
from clcore.data import (EXPECTED_FILES, DatasetNotFoundError, RawData, build_benchmark, load_raw,
                         synthetic_raw)


def bench_config(**fields) -> BenchmarkConfig:
    return ExperimentConfig.from_dict({"benchmark": {"name": "synthetic", **fields}}).benchmark


def indexed_raw(n_train=1000, n_test=200) -> RawData:
    """Images that encode their sample's index (pixel 0: index // 256, pixel 1: index % 256);
    labels cycle 0..9. Test indices are offset by 10000 so they never collide with train ones."""

    def make(indices):
        x = torch.zeros(len(indices), 1, 2, 2, dtype=torch.uint8)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = indices // 256, indices % 256
        return x, indices % 10

    return RawData("synthetic", *make(torch.arange(n_train)), *make(10000 + torch.arange(n_test)))


def decode(x: torch.Tensor) -> set[int]:
    return set((x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()).tolist())


def coordinate_raw(n=300, side=8) -> RawData:
    """Every image is the same 'coordinate image': pixel p holds the value p (p < 256)."""
    image = torch.arange(side * side, dtype=torch.uint8).view(1, 1, side, side)
    return RawData("synthetic", image.repeat(n, 1, 1, 1), torch.arange(n) % 10,
                   image.repeat(n // 2, 1, 1, 1), torch.arange(n // 2) % 10)


def splits(task):
    return {"train": task.train, "val": task.val, "test": task.test}


# ------------------------------------------------------------------------------------ class splits
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_split_tasks_have_disjoint_classes_and_scenario_targets(scenario):
    raw = indexed_raw()
    bench = build_benchmark(bench_config(scenario=scenario, n_tasks=5), raw)
    assert bench.n_tasks == 5 and bench.classes_per_task == 2
    assert [t.classes for t in bench.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for t, task in enumerate(bench.tasks):
        for name, split in splits(task).items():
            labels = torch.tensor([i % 10 for i in sorted(decode(split.x))])
            assert set(labels.tolist()) == set(task.classes), name  # only this task's classes
            assert torch.equal(split.task_ids, torch.full_like(split.y, t))
            local = split.y - t * 2 if scenario == "class" else split.y
            assert set(local.tolist()) == {0, 1}
            # the target is the class's index within the task, per sample
            original = (split.x[:, 0, 0, 0].long() * 256 + split.x[:, 0, 0, 1].long()) % 10
            assert torch.equal(local, original - task.classes[0])


def test_class_order_and_shuffled_classes():
    raw = indexed_raw()
    order = [3, 7, 0, 9, 1, 5, 2, 8, 4, 6]
    bench = build_benchmark(bench_config(n_tasks=2, class_order=order), raw)
    assert [t.classes for t in bench.tasks] == [(3, 7, 0, 9, 1), (5, 2, 8, 4, 6)]
    y = bench.tasks[0].train.y
    x_class = torch.tensor([i % 10 for i in (bench.tasks[0].train.x[:, 0, 0, 0].long() * 256
                                             + bench.tasks[0].train.x[:, 0, 0, 1].long()).tolist()])
    assert torch.equal(torch.tensor(order[:5])[y], x_class)  # target k means class order[k]

    shuffled = [build_benchmark(bench_config(n_tasks=5, shuffle_classes=True, seed=s), raw) for s in (0, 0, 1)]
    classes = [[t.classes for t in b.tasks] for b in shuffled]
    assert classes[0] == classes[1] != classes[2]
    assert sorted(c for t in classes[0] for c in t) == list(range(10))


# ------------------------------------------------------------------------------------ validation carving
@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.25])
def test_validation_is_carved_from_train_and_disjoint_from_it(val_fraction):
    raw = indexed_raw(n_train=1000, n_test=200)
    bench = build_benchmark(bench_config(n_tasks=5, val_fraction=val_fraction), raw)
    train = set().union(*(decode(t.train.x) for t in bench.tasks))
    val = set().union(*(decode(t.val.x) for t in bench.tasks))
    test = set().union(*(decode(t.test.x) for t in bench.tasks))
    assert train.isdisjoint(val)
    assert train | val == set(range(1000))  # every training sample is in exactly one of them
    assert len(val) == round(val_fraction * 1000)
    assert test == set(range(10000, 10200))  # the test set is the dataset's own, untouched


def test_train_samples_per_task_caps_training_only():
    raw = indexed_raw()
    full = build_benchmark(bench_config(n_tasks=5), raw)
    capped = build_benchmark(bench_config(n_tasks=5, train_samples_per_task=17), raw)
    for a, b in zip(full.tasks, capped.tasks):
        assert len(b.train) == 17 and torch.equal(b.train.x, a.train.x[:17])
        assert torch.equal(b.val.x, a.val.x) and torch.equal(b.test.x, a.test.x)


def test_normalize_false_feeds_the_model_pixels_in_zero_one(synthetic):
    from clcore.config import ModelConfig
    from clcore.models import build_model

    inputs = {}
    for normalize in (True, False):
        bench = build_benchmark(bench_config(normalize=normalize), synthetic)
        model = build_model(ModelConfig(hidden_sizes=[8]), input_shape=bench.input_shape, scenario="task",
                            n_tasks=bench.n_tasks, classes_per_task=bench.classes_per_task, mean=bench.mean,
                            std=bench.std)
        first = model.backbone.net[1]  # after the Flatten
        hook = first.register_forward_pre_hook(lambda m, args, n=normalize: inputs.__setitem__(n, args[0]))
        model(bench.tasks[0].train.x[:50], bench.tasks[0].train.task_ids[:50])
        hook.remove()
    pixels = bench.tasks[0].train.x[:50].flatten(1).float() / 255
    torch.testing.assert_close(inputs[False], pixels)
    torch.testing.assert_close(inputs[True], (pixels - 0.5) / 0.25)  # the synthetic images' mean and std


# ------------------------------------------------------------------------------------ permutations
def _revealed_permutations(split) -> torch.Tensor:
    """Each sample of a coordinate image reveals the pixel permutation applied to it."""
    return split.x.flatten(1).long()


def test_permuted_mnist_one_permutation_per_task_shared_by_its_splits():
    raw = coordinate_raw()
    config = ExperimentConfig.from_dict({"benchmark": {"name": "permuted_mnist", "scenario": "domain",
                                                       "n_tasks": 4}}).benchmark
    bench = build_benchmark(config, raw)
    perms = []
    for task in bench.tasks:
        revealed = torch.cat([_revealed_permutations(s) for s in splits(task).values()])
        perm = revealed[0]
        assert (revealed == perm).all()  # the same permutation on train, val and test
        assert sorted(perm.tolist()) == list(range(64))  # a permutation of the pixels
        perms.append(perm)
        assert task.classes == tuple(range(10)) and set(task.train.y.tolist()) <= set(range(10))
    assert len({tuple(p.tolist()) for p in perms}) == 4  # a different one per task

    again = build_benchmark(config, raw)
    assert all(torch.equal(_revealed_permutations(a.test)[0], p) for a, p in zip(again.tasks, perms))
    other_seed = build_benchmark(ExperimentConfig.from_dict({"benchmark": {
        "name": "permuted_mnist", "scenario": "domain", "n_tasks": 4, "seed": 1}}).benchmark, raw)
    assert not torch.equal(_revealed_permutations(other_seed.tasks[1].test)[0], perms[1])


def test_permuted_mnist_class_il_offsets_targets_by_task():
    config = ExperimentConfig.from_dict({"benchmark": {"name": "permuted_mnist", "scenario": "class",
                                                       "n_tasks": 3}}).benchmark
    bench = build_benchmark(config, coordinate_raw())
    assert bench.classes_per_task == 10
    for t, task in enumerate(bench.tasks):
        assert set(task.train.y.tolist()) == set(range(10 * t, 10 * t + 10))


# ------------------------------------------------------------------------------------ rotations
def _rotated_config(n_tasks, rotations=None):
    return ExperimentConfig.from_dict({"benchmark": {"name": "rotated_mnist", "scenario": "domain",
                                                     "n_tasks": n_tasks, "rotations": rotations}}).benchmark


def test_rotated_mnist_default_angles_are_even_steps_of_180_degrees():
    raw = synthetic_raw(0)
    bench = build_benchmark(_rotated_config(4), raw)  # angles 0, 45, 90, 135
    base = bench.tasks[0]
    for name, split in splits(base).items():
        other = splits(bench.tasks[2])[name]
        assert torch.equal(other.x, torch.rot90(split.x, 1, dims=(-2, -1))), name  # 90 degrees, counter-clockwise
        assert torch.equal(other.y, split.y)
    # task 0 is unrotated: its images are the raw ones (in the benchmark's sample order)
    raw_images = {bytes(img.numpy()) for img in raw.x_test}
    assert all(bytes(img.numpy()) in raw_images for img in base.test.x)
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    expected = rotate(base.test.x.float(), 45.0, interpolation=InterpolationMode.BILINEAR).round().clamp(0, 255)
    assert torch.equal(bench.tasks[1].test.x, expected.to(torch.uint8))


def test_rotated_mnist_explicit_angles():
    raw = synthetic_raw(0)
    bench = build_benchmark(_rotated_config(3, [180.0, -90.0, 0.0]), raw)
    unrotated = bench.tasks[2].val.x
    assert torch.equal(bench.tasks[0].val.x, torch.rot90(unrotated, 2, dims=(-2, -1)))
    assert torch.equal(bench.tasks[1].val.x, torch.rot90(unrotated, 3, dims=(-2, -1)))


# ------------------------------------------------------------------------------------ determinism
def test_benchmark_is_fixed_by_its_seed():
    raw = synthetic_raw(0)
    a, b = (build_benchmark(bench_config(n_tasks=5, seed=3), raw) for _ in range(2))
    c = build_benchmark(bench_config(n_tasks=5, seed=4), raw)
    for ta, tb, tc in zip(a.tasks, b.tasks, c.tasks):
        for name in ("train", "val", "test"):
            sa, sb = splits(ta)[name], splits(tb)[name]
            assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
        assert not torch.equal(ta.val.x, tc.val.x)  # another seed carves another validation set


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_a_task_range_is_those_tasks_alone_renumbered_from_zero(scenario):
    """benchmark.task_range [2, 4]: tasks 2 and 3 of the stream, as tasks 0 and 1 of a stream of their own
    (task ids, and class-IL targets, start at 0); no sample of another task is in it."""
    raw = synthetic_raw(0)
    full = build_benchmark(bench_config(scenario=scenario, n_tasks=5), raw)
    view = build_benchmark(bench_config(scenario=scenario, n_tasks=5, task_range=[2, 4]), raw)
    assert view.n_tasks == 2 and [t.id for t in view.tasks] == [0, 1]
    shift = 2 * full.classes_per_task if scenario == "class" else 0
    for new, old in zip(view.tasks, full.tasks[2:4]):
        assert new.classes == old.classes
        for name in ("train", "val", "test"):
            a, b = splits(new)[name], splits(old)[name]
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y - shift) and torch.equal(a.task_ids, b.task_ids - 2)
    assert {c for t in view.tasks for c in t.classes}.isdisjoint({c for t in full.tasks[:2] + full.tasks[4:]
                                                                  for c in t.classes})


@pytest.mark.parametrize("task_range", [[0, 0], [3, 2], [0, 6], [-1, 2], [0]])
def test_a_task_range_outside_the_stream_is_rejected(task_range):
    with pytest.raises(ConfigError, match=r"benchmark.task_range: must be \[start, stop\] with 0 <= start < stop"):
        bench_config(n_tasks=5, task_range=task_range).validate()


# ------------------------------------------------------------------------------------ real MNIST
def test_load_real_mnist(mnist_raw):
    assert mnist_raw.source == "mnist"
    assert mnist_raw.x_train.shape == (60000, 1, 28, 28) and mnist_raw.x_train.dtype == torch.uint8
    assert mnist_raw.x_test.shape == (10000, 1, 28, 28)
    assert mnist_raw.y_train.dtype == torch.int64
    assert mnist_raw.y_train[:5].tolist() == [5, 0, 4, 1, 9] and mnist_raw.y_test[:3].tolist() == [7, 2, 1]
    assert torch.bincount(mnist_raw.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_split_mnist_on_real_data(mnist_raw):
    config = ExperimentConfig.from_dict({"benchmark": {"name": "split_mnist", "scenario": "class",
                                                       "n_tasks": 5}}).benchmark
    bench = build_benchmark(config, mnist_raw)
    train_counts = torch.bincount(mnist_raw.y_train)
    test_counts = torch.bincount(mnist_raw.y_test)
    assert bench.input_shape == (1, 28, 28)
    for t, task in enumerate(bench.tasks):
        a, b = task.classes
        assert (a, b) == (2 * t, 2 * t + 1)
        assert len(task.train) + len(task.val) == int(train_counts[a] + train_counts[b])
        assert len(task.test) == int(test_counts[a] + test_counts[b])
        assert set(task.test.y.tolist()) == {2 * t, 2 * t + 1}
    assert sum(len(t.val) for t in bench.tasks) == 6000


def test_load_real_fashion_mnist(mnist_dir):
    missing = [f for f in EXPECTED_FILES["fashion_mnist"] if not (mnist_dir / f).is_file()]
    if missing:
        pytest.skip(f"Fashion-MNIST not under {mnist_dir}: missing {', '.join(missing)}")
    config = ExperimentConfig.from_dict({"benchmark": {"name": "split_fashion_mnist", "data_dir": str(mnist_dir),
                                                       "download": False}}).benchmark
    raw = load_raw(config)
    assert raw.source == "fashion_mnist" and raw.x_train.shape == (60000, 1, 28, 28)
    assert torch.bincount(raw.y_train).tolist() == [6000] * 10


# ------------------------------------------------------------------------------------ missing data
def test_missing_mnist_with_download_off_names_files_and_root(tmp_path):
    config = bench_config()
    config.name, config.data_dir, config.download = "split_mnist", str(tmp_path), False
    with pytest.raises(DatasetNotFoundError) as err:
        load_raw(config)
    message = str(err.value)
    assert str(tmp_path.resolve()) in message and "download is false" in message
    for f in EXPECTED_FILES["mnist"]:
        assert f in message
    assert isinstance(err.value, FileNotFoundError)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_data_dir_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CLCORE_DATA_DIR", str(tmp_path / "from-env"))
    config = bench_config()
    config.name, config.download = "split_mnist", False
    with pytest.raises(DatasetNotFoundError, match="from-env"):
        load_raw(config)


# ------------------------------------------------------------------------------------ CIFAR pickles
def _pixels(n: int, offset: int) -> np.ndarray:
    """Rows of 3072 bytes in CIFAR's layout (R plane, G plane, B plane, each 32x32 row-major):
    sample i has R = (offset + i) % 256, G = 1, B = 2, except pixel (0, 1) of R which is 7."""
    data = np.empty((n, 3, 32, 32), dtype=np.uint8)
    data[:, 0] = ((offset + np.arange(n)) % 256)[:, None, None]
    data[:, 1], data[:, 2] = 1, 2
    data[:, 0, 0, 1] = 7
    return data.reshape(n, 3072)


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch=20, n_test=30, skip=()) -> None:
    folder = root / "cifar-10-batches-py"
    for b in range(1, 6):
        labels = [(i + b) % 10 for i in range(per_batch)]
        if f"data_batch_{b}" not in skip:
            _dump(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": labels,
                                               "data": _pixels(per_batch, (b - 1) * per_batch),
                                               "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]})
    if "test_batch" not in skip:
        _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [i % 10 for i in range(n_test)],
                                      "data": _pixels(n_test, 200), "filenames": [f"t{i}.png" for i in range(n_test)]})
    if "batches.meta" not in skip:
        _dump(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                        "frog", "horse", "ship", "truck"],
                                        "num_cases_per_batch": per_batch, "num_vis": 3072})


def write_cifar100(root: Path, n_train=300, n_test=200) -> None:
    folder = root / "cifar-100-python"
    for name, n, offset in (("train", n_train, 0), ("test", n_test, 50)):
        fine = [i % 100 for i in range(n)]
        _dump(folder / name, {"filenames": [f"{name}{i}.png" for i in range(n)], "batch_label": name,
                              "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": _pixels(n, offset)})
    _dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse{i}" for i in range(20)]})


def _cifar_config(name, root, download=False, **fields):
    return ExperimentConfig.from_dict({"benchmark": {"name": name, "scenario": "class", "data_dir": str(root),
                                                     "download": download, **fields}}).benchmark


def _check_pixels(x: torch.Tensor, offset: int) -> None:
    n = x.shape[0]
    assert x.dtype == torch.uint8 and x.shape == (n, 3, 32, 32) and x.is_contiguous()
    assert torch.equal(x[:, 0, 5, 5], (offset + torch.arange(n)) % 256)  # sample order and the R plane
    assert (x[:, 1] == 1).all() and (x[:, 2] == 2).all()  # channels are planes, not interleaved
    assert (x[:, 0, 0, 1] == 7).all()  # row-major within a plane


def test_cifar10_loads_tiny_files_in_the_real_pickle_format(tmp_path):
    write_cifar10(tmp_path)
    raw = load_raw(_cifar_config("split_cifar10", tmp_path, n_tasks=5))
    assert raw.source == "cifar10"
    _check_pixels(raw.x_train, 0)
    _check_pixels(raw.x_test, 200)
    # batches are concatenated in order 1..5
    assert raw.y_train.tolist() == [(i + b) % 10 for b in range(1, 6) for i in range(20)]
    assert raw.y_test.tolist() == [i % 10 for i in range(30)]
    bench = build_benchmark(_cifar_config("split_cifar10", tmp_path, n_tasks=5, val_fraction=0.0), raw)
    assert bench.input_shape == (3, 32, 32) and bench.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    assert [set(t.train.y.tolist()) for t in bench.tasks] == [{2 * t, 2 * t + 1} for t in range(5)]
    assert sum(len(t.train) for t in bench.tasks) == 100


def test_cifar100_loads_tiny_files_in_the_real_pickle_format(tmp_path):
    write_cifar100(tmp_path)
    raw = load_raw(_cifar_config("split_cifar100", tmp_path, n_tasks=10))
    assert raw.source == "cifar100"
    _check_pixels(raw.x_train, 0)
    _check_pixels(raw.x_test, 50)
    assert raw.y_train.tolist() == [i % 100 for i in range(300)]  # fine labels, not coarse
    bench = build_benchmark(_cifar_config("split_cifar100", tmp_path, n_tasks=10, val_fraction=0.0), raw)
    assert bench.classes_per_task == 10
    assert set(bench.tasks[3].test.y.tolist()) == set(range(30, 40))


def test_cifar_files_missing_with_download_off_names_them(tmp_path):
    write_cifar10(tmp_path, skip=("test_batch", "batches.meta"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_raw(_cifar_config("split_cifar10", tmp_path, n_tasks=5))
    message = str(err.value)
    assert "cifar-10-batches-py/test_batch" in message and "cifar-10-batches-py/batches.meta" in message
    assert "data_batch_1" not in message and str(tmp_path.resolve()) in message


def test_cifar_file_in_the_wrong_format_fails_loudly(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError):  # read by torchvision's own pickle reader: no md5 check, no silence
        load_raw(_cifar_config("split_cifar10", tmp_path, n_tasks=5))


def test_download_goes_through_torchvision_when_files_are_missing(tmp_path, monkeypatch):
    """With download on, the files are fetched by torchvision's own ``download()`` (stubbed: no network)."""
    import torchvision.datasets as tvd

    calls = []

    def fake_download(self):
        calls.append(Path(self.root))
        write_cifar10(Path(self.root))

    monkeypatch.setattr(tvd.CIFAR10, "download", fake_download)
    raw = load_raw(_cifar_config("split_cifar10", tmp_path / "new-root", download=True, n_tasks=5))
    assert calls == [tmp_path / "new-root"]
    assert raw.x_train.shape == (100, 3, 32, 32)
    load_raw(_cifar_config("split_cifar10", tmp_path / "new-root", download=True, n_tasks=5))
    assert len(calls) == 1  # present files are not fetched again
