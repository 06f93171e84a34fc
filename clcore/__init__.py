"""clcore: EWC, online EWC and RWalk on device-resident continual-learning benchmarks.

    import clcore
    config = clcore.ExperimentConfig.from_yaml("configs/split_mnist_naive.yaml")
    result = clcore.run(config)
    print(result.test_matrix, result.metrics)
"""

from clcore.config import ConfigError, ExperimentConfig
from clcore.train import Result, TaskReport, TrainingDivergedError, run

__all__ = ["ExperimentConfig", "ConfigError", "run", "Result", "TaskReport", "TrainingDivergedError"]
