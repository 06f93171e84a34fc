"""clcore: regularisation strategies (EWC, online EWC, RWalk, SI, MAS) on device-resident
continual-learning benchmarks.

    import clcore
    config = clcore.ExperimentConfig.from_yaml("configs/split_mnist_naive.yaml")
    result = clcore.run(config)
    print(result.test_matrix, result.metrics)

Names are imported when first used: validating a config (`clcore.config`, `clcore.params`,
`clcore.strategies.catalogue`) imports no torch; training does.
"""

from __future__ import annotations

from clcore.lazy import lazy_exports

_EXPORTS = {
    "ExperimentConfig": "clcore.config", "ConfigError": "clcore.params",
    "run": "clcore.train", "Result": "clcore.train", "TaskReport": "clcore.train",
    "TrainingDivergedError": "clcore.train",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
