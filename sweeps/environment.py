"""Settings that Ray Tune and MLflow read only from environment variables, in one table.

Tune picks its output mode and automatic loggers from the driver's environment, and MLflow its HTTP
retries from the environment of whichever process logs; neither takes them as arguments. So the
process that owns its environment sets them, once: the ``clsweep`` program at its start, and a
Python program's sweep driver when it starts Ray (`sweeps.runner.init_ray`). The workers of a local
Ray that driver starts inherit them; those of a cluster it joins get them through Ray's
``runtime_env``. A value already in the environment wins.
"""

from __future__ import annotations

import os
import secrets
from typing import Mapping

DEFAULTS = {
    # Ray Tune, on the driver: the classic trial table (sweeps.ray_private.BestOfCompleteReporter), only the
    # loggers the runner adds, no warning about syncing experiment checkpoints.
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # MLflow, wherever it logs: fail fast against a dead server, no "View run at ..." line per trial, no
    # progress bar for a config download.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def missing(environment: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The defaults ``environment`` does not set."""
    return {k: v for k, v in DEFAULTS.items() if k not in environment}


def for_workers() -> dict[str, str]:
    """The env_vars of the ``runtime_env`` a driver gives its Ray workers: this process's values."""
    return {k: os.environ.get(k, v) for k, v in DEFAULTS.items()}


def set_for_this_process() -> None:
    """Put the missing defaults into this process's environment (called by a program's entry point)."""
    os.environ.update(missing())


def require_token_for_local_ray() -> None:
    """Token authentication for the local Ray instance this process is about to start, where the
    user has not chosen a mode (``RAY_AUTH_MODE`` unset): Ray 2.60 binds its GCS server and raylet to
    every interface whatever the node address (docs/cluster.md, "Ports of a local instance"), and
    without a token whoever reaches a port can run code there. The token is made for this process
    (``RAY_AUTH_TOKEN``, which Ray reads before ``~/.ray/auth_token``; no file is written) unless one
    is set; the instance's processes inherit it. Call it before Ray is first started in the process:
    Ray keeps the mode it read first."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


__all__ = ["DEFAULTS", "missing", "for_workers", "set_for_this_process", "require_token_for_local_ray"]
