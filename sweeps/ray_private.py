"""The two places where the sweep service reaches into Ray Tune's private API, and nowhere else.

Each is one function written against Ray ``WRITTEN_FOR``; `tests/test_ray_private.py` checks that the
installed Ray still has what they use and fails naming this module when an upgrade moves it.

- `attach_callbacks`: driver callbacks hold live state (open files, MLflow clients) that must not be
  pickled into ``tuner.pkl`` (a resume would restore it stale), and `tune.Tuner.restore` takes no
  callbacks; so they are added to the Tuner's run config after it was written.
- `BestOfCompleteReporter`: Ray's trial table names a "current best trial" from any trial's last
  result; a trial stopped early after one easy task would win, so only trials that saw every task count.
"""

from __future__ import annotations

from ray import tune

WRITTEN_FOR = "2.60"


def attach_callbacks(tuner: tune.Tuner, callbacks: list) -> None:
    """Add ``callbacks`` to ``tuner``'s run config, after ``tuner.pkl`` was written (private: ``_local_tuner``)."""
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks = [*(run_config.callbacks or []), *callbacks]


class BestOfCompleteReporter(tune.CLIReporter):
    """`tune.CLIReporter` whose current best trial is the best of those whose ``time_attr`` reached
    ``n_tasks`` (private: overrides ``_current_best_trial``)."""

    def __init__(self, n_tasks: int, time_attr: str, **kwargs):
        super().__init__(**kwargs)
        self.n_tasks, self.time_attr = n_tasks, time_attr

    def _current_best_trial(self, trials):
        return super()._current_best_trial(
            [t for t in trials if (t.last_result or {}).get(self.time_attr) == self.n_tasks])


__all__ = ["WRITTEN_FOR", "attach_callbacks", "BestOfCompleteReporter"]
