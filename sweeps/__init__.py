"""sweeps: the Ray Tune sweep service.

    from sweeps import load_spec                    # validate a sweep file (no Ray, no torch)
    spec = load_spec("search_spaces/quickstart.yaml", ["algorithm.num_samples=4"])

    from sweeps.runner import run_sweep, resume_sweep   # these import Ray
    state = run_sweep(spec)
    print(state.best().params)

    from sweeps import best_config                  # the best trial, read back from MLflow
    config = best_config("quickstart", tracking_uri="http://mlflow:5000")

Names are imported when first used, so ``clsweep --help`` and ``clsweep status`` stay fast.
"""

from __future__ import annotations

from clcore.lazy import lazy_exports

_EXPORTS = {
    "SweepSpec": "sweeps.spec", "SpecError": "sweeps.spec", "load_spec": "sweeps.spec",
    "best_config": "sweeps.best", "best_run": "sweeps.best", "top_configs": "sweeps.best", "top_runs": "sweeps.best",
    "BestRun": "sweeps.best",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
