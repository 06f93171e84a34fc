"""benchmarks/gpu_check.sh, the one script to run when a GPU is lent, works end to end: on this CPU
machine (``DEVICE=cpu``, tiny sizes) it runs every step and prints one JSON line of figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_and_prints_one_json_line(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "GPU_CHECK_OUT": str(tmp_path / "out"), "DATA_DIR": str(tmp_path / "none"),
           "PYTHON": sys.executable}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["ok"] is True and figures["device"] == "cpu"
    assert {"ewc_separate_1", "ewc_online", "rwalk", "fisher_speedup_vs_loop"} <= set(figures["overhead"])
    assert figures["throughput"].startswith("skipped: no MNIST")
    assert figures["fractional_gpu_sweep"]["ended"] == {"TERMINATED": 8, "ERROR": 0}
