"""Shared fixtures: small configs on the synthetic benchmark, and the real MNIST when it is present.

Real data is found through ``$CLCORE_TEST_DATA_DIR`` (default: ``../shared/datasets`` next to the
repository, laid out as torchvision expects: ``MNIST/raw/...``). Tests that need it skip, naming the
directory, when it is absent, so the suite passes on a fresh machine.

Torch runs on one thread in tests: the models here are tiny, so intra-op threads gain nothing, and on
a busy CI machine OpenMP threads that wait on each other made the suite several times slower.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from clcore.config import ExperimentConfig
from clcore.data import EXPECTED_FILES, load_raw, synthetic_raw

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA_DIR = Path(os.environ.get("CLCORE_TEST_DATA_DIR", REPO_ROOT.parent / "shared" / "datasets")).resolve()


def small_config(overrides: dict | None = None, **sections) -> ExperimentConfig:
    """A fast CPU config on the synthetic benchmark; ``sections`` update whole sections,
    ``overrides`` are dotted paths (``{"train.lr": 0.1}``)."""
    data = {
        "benchmark": {"name": "synthetic", "scenario": "task", "n_tasks": 5},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "strategy": {"name": "naive"},
        "train": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 32, "device": "cpu"},
        "seed": 0,
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    config = ExperimentConfig.from_dict(data)
    return config.with_overrides(overrides) if overrides else config


@pytest.fixture(scope="session")
def synthetic():
    """The synthetic raw data (ten classes of 8x8 images), built once."""
    return synthetic_raw(0)


def _mnist_missing() -> list[str]:
    return [f for f in EXPECTED_FILES["mnist"] if not (TEST_DATA_DIR / f).is_file()]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The data root holding the real MNIST; skips (naming the directory) when it is absent."""
    missing = _mnist_missing()
    if missing:
        pytest.skip(f"real MNIST not found under {TEST_DATA_DIR} (set CLCORE_TEST_DATA_DIR); "
                    f"missing: {', '.join(missing)}")
    return TEST_DATA_DIR


@pytest.fixture(scope="session")
def mnist_raw(mnist_dir):
    """The real MNIST as `RawData`, loaded once per session through `clcore.data.load_raw`."""
    config = ExperimentConfig.from_dict({"benchmark": {"name": "split_mnist", "data_dir": str(mnist_dir),
                                                       "download": False}}).benchmark
    return load_raw(config)



def assert_penalty_grad_is_autograd(strategy, model) -> None:
    """Move ``model`` off the anchor, then the strategy's hand-written penalty gradient must equal
    autograd's gradient of its penalty value (the one-backward contract adds the former)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    value = strategy.penalty(model)
    assert float(value.detach()) > 0
    want = torch.autograd.grad(value, list(model.parameters()))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    strategy.add_penalty_grad(model)
    for p, g in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7 * float(g.abs().max()) + 1e-12)
