"""What `sweeps.ray_private` uses of Ray Tune's private API is still there (it was written for Ray
``WRITTEN_FOR``); a failure here names what moved, so an upgrade breaks this test, not a sweep."""

from __future__ import annotations

import inspect

import pytest

ray = pytest.importorskip("ray")

from ray import tune  # noqa: E402

from sweeps import ray_private  # noqa: E402

MOVED = f"sweeps/ray_private.py was written for Ray {ray_private.WRITTEN_FOR}, and Ray {ray.__version__} changed"


def test_the_installed_ray_is_the_one_the_private_uses_were_written_for():
    assert ray.__version__.startswith(ray_private.WRITTEN_FOR + "."), \
        f"{MOVED}: re-check its two functions against this Ray, then update WRITTEN_FOR"


def test_a_tuner_still_exposes_its_run_config_through_local_tuner(tmp_path):
    tuner = tune.Tuner(lambda config: {"x": 1}, run_config=tune.RunConfig(storage_path=str(tmp_path), name="probe"))
    assert hasattr(tuner, "_local_tuner"), f"{MOVED}: Tuner._local_tuner is gone"
    marker = tune.Callback()
    ray_private.attach_callbacks(tuner, [marker])
    assert tuner._local_tuner.get_run_config().callbacks[-1] is marker, f"{MOVED}: the run config is a copy now"


def test_cli_reporter_still_picks_its_best_trial_in_current_best_trial():
    method = getattr(tune.CLIReporter, "_current_best_trial", None)
    assert method is not None, f"{MOVED}: CLIReporter._current_best_trial is gone"
    assert list(inspect.signature(method).parameters) == ["self", "trials"], f"{MOVED}: its signature"

    class Trial:
        def __init__(self, tasks, value):
            self.last_result = {"tasks": tasks, "acc": value}
            self.status = "TERMINATED"

        def __str__(self):
            return f"trial {self.last_result}"

    reporter = ray_private.BestOfCompleteReporter(3, "tasks", metric="acc", mode="max")
    early, complete = Trial(1, 0.99), Trial(3, 0.7)
    best, _ = reporter._current_best_trial([early, complete])
    assert best is complete  # the early-stopped trial's higher value does not count
