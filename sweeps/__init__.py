"""sweeps: the Ray Tune sweep service.

    from sweeps import load_spec                    # validate a sweep file (no Ray import)
    spec = load_spec("search_spaces/quickstart.yaml", ["algorithm.num_samples=4"])

    from sweeps.runner import run_sweep, resume_sweep, load_sweep   # these import Ray
    state = run_sweep(spec)
    print(state.best().params)

    from sweeps import best_config                  # the best trial, read back from MLflow
    config = best_config("quickstart", tracking_uri="http://mlflow:5000")
"""

from sweeps.best import BestRun, best_config, best_run, top_configs, top_runs
from sweeps.spec import SpecError, SweepSpec, load_spec

__all__ = ["SweepSpec", "SpecError", "load_spec", "best_config", "best_run", "top_configs", "top_runs", "BestRun"]
