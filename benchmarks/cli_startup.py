"""How long `clsweep` takes to answer, beside the interpreter's own start, in one run.

    python benchmarks/cli_startup.py [--repeats 7]

Times (median of ``--repeats`` runs, each a fresh interpreter) ``python -c pass``, ``import torch``,
``clsweep --help``, ``clsweep run --dry-run search_spaces/quickstart.yaml`` and ``clsweep status`` on a
sweep folder written here (three trials, as `sweeps.storage` keeps them), and lists the heavy modules
(torch, ray, mlflow, optuna) each command imported, from ``python -X importtime``. Target: the three
``clsweep`` commands import none of them. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "optuna")
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def example_sweep_folder(parent: Path) -> Path:
    """A finished-looking storage folder of the quickstart sweep: its spec, the driver's ledger and each
    trial's task rows (what `clsweep status` reads)."""
    from sweeps.spec import load_spec
    from sweeps.storage import SPEC_FILE, TASKS_FILE, TERMINATED, TIME_ATTR, TrialLedger, trial_dirname

    spec = load_spec(QUICKSTART)
    folder = parent / spec.name
    folder.mkdir(parents=True)
    spec.to_yaml(folder / SPEC_FILE)
    ledger = TrialLedger(folder)
    for i in range(3):
        trial_id = f"t{i:05d}"
        params = {k: d.candidates()[0] for k, d in spec.search.items()}
        ledger.trial_started(trial_id, params)
        (folder / trial_dirname(trial_id)).mkdir()
        rows = [{TIME_ATTR: k + 1, spec.objective.metric: 0.5 + 0.1 * k} for k in range(spec.n_tasks)]
        (folder / trial_dirname(trial_id) / TASKS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        ledger.trial_ended(trial_id, TERMINATED, params, 0)
    return folder


def commands(folder: Path) -> dict[str, list[str]]:
    clsweep = [sys.executable, "-m", "sweeps.cli"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import torch": [sys.executable, "-c", "import torch"],
        "clsweep --help": [*clsweep, "--help"],
        "clsweep run --dry-run": [*clsweep, "run", "--dry-run", str(QUICKSTART)],
        "clsweep status": [*clsweep, "status", str(folder)],
    }


def heavy_imports(command: list[str]) -> list[str]:
    """The heavy top-level packages ``command`` imported (from ``-X importtime``'s report)."""
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return sorted(h for h in HEAVY if h in names)


def seconds(command: list[str], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, cwd=ROOT)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(example_sweep_folder(Path(tmp)))
        times = {name: seconds(cmd, args.repeats) for name, cmd in cmds.items()}
        imported = {name: heavy_imports(cmd) for name, cmd in cmds.items() if name.startswith("clsweep")}
    base = times["python -c pass"]
    print(f"median of {args.repeats} fresh interpreters each ({sys.executable}):")
    for name, t in times.items():
        extra = ""
        if name in imported:
            extra = f"   imports {', '.join(imported[name])}  MISSED" if imported[name] else "   imports none of " \
                    f"{', '.join(HEAVY)}  ok"
        print(f"  {name:<24} {t:6.3f} s   {t / base:5.1f}x python -c pass{extra}")
    print(json.dumps({"seconds": {k: round(v, 3) for k, v in times.items()}, "heavy_imports": imported}))


if __name__ == "__main__":
    main()
