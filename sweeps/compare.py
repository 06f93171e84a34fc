"""One sweep file under several selection protocols, side by side: ``clsweep compare``.

    clsweep compare search_spaces/quickstart.yaml --protocols end_of_training,prefix:2,prefix:2:rest --seeds 3
    clsweep compare search_spaces/ewc_split_mnist_task.yaml --protocols end_of_training,two_phase:name=split_fashion_mnist

Each protocol is a sweep of its own, ``<name>-<protocol>`` (``quickstart-end_of_training``,
``quickstart-prefix2``, ``quickstart-prefix2rest``), in the file's storage. Each one's chosen values
train again on the same ``--seeds`` fresh seeds: that is the protocol's evaluation, and
``end_of_training`` gets one too, so every row compares like with like. A row holds:

- test metrics, mean ± std over those seeds;
- the difference in average accuracy from ``end_of_training``, where both average over the same tasks
  (not for ``prefix:K:rest``, evaluated on tasks K.. alone);
- the compute spent (`SweepState.cost`, every phase), also as a ratio to ``end_of_training``.

The table goes to ``<storage>/<name>-compare/``: ``compare.csv``, ``compare.md``, ``compare.json``
and ``compare.png`` (accuracy against compute, with error bars). Each tracked protocol's sweep also
gets them in MLflow, as ``compare/`` artifacts of its parent run. Every protocol's sweep file is
validated before any trial starts. A protocol whose sweep already finished is read back, not run
again; an unfinished one is resumed. So running the same command again continues a comparison.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Optional

import yaml

from clcore.config import ConfigError
from sweeps.spec import PROTOCOLS, Chf, Rounds, SweepSpec, load_spec

TOKEN = re.compile(r"^(end_of_training|prefix:(\d+)(:rest)?|two_phase:([a-z_]+)=([^,:=]+)|per_task(:seen)?|"
                   r"chf:([0-9.eE+-]+))$")
TOKENS = ("end_of_training, prefix:K (tune on the first K tasks, evaluate on all), prefix:K:rest, "
          "two_phase:FIELD=VALUE (tune on the benchmark with that field changed: two_phase:seed=1), "
          "per_task (a round per task, selected on it), per_task:seen (selected on the tasks seen), "
          "chf:LAMBDA (CHF, lambda decayed from LAMBDA; the lr grid from search.train.lr)")
CHF_LR_POINTS = 5  # chf's lr grid from a searched range: this many values, log-spaced over it
COMPARE_FILES = ("compare.csv", "compare.md", "compare.json", "compare.png")
COLUMNS = ("average_accuracy", "forgetting", "min_accuracy_current_task")  # test, mean ± std


# the sections a stored sweep must share with a spec to be that spec's sweep (a rerun reads it back)
SAME_SWEEP = ("base", "search", "objective", "protocol", "selection", "reference")


def protocol_section(token: str, seeds: int) -> dict:
    """The ``protocol:`` section a ``--protocols`` token stands for."""
    match = TOKEN.match(token)
    if match is None:
        raise ConfigError("--protocols", f"unknown protocol {token!r}", TOKENS)
    if match.group(7) is not None:
        return {"name": "chf", "start": float(match.group(7)), "seeds": seeds}
    if token.startswith("per_task"):
        return {"name": "per_task", "select_on": "seen" if match.group(6) else "current", "seeds": seeds}
    if match.group(4) is not None:
        return {"name": "two_phase", "tune_on": {match.group(4): yaml.safe_load(match.group(5))}, "seeds": seeds}
    if match.group(2) is None:
        return {"name": "end_of_training", "seeds": seeds}
    return {"name": "prefix", "tasks": int(match.group(2)), "evaluate_on": "rest" if match.group(3) else "all",
            "seeds": seeds}


def plan(path: str | Path, tokens: list[str], seeds: int, overrides: Optional[list[str]] = None
         ) -> list[tuple[str, SweepSpec]]:
    """Every protocol's sweep, validated (all of them before anything runs)."""
    if seeds < 1:
        raise ConfigError("--seeds", f"got {seeds}", "an integer >= 1 (the fresh seeds each protocol's choice trains on)")
    if len(set(tokens)) < len(tokens) or not tokens:
        raise ConfigError("--protocols", f"got {','.join(tokens)!r}", f"distinct protocols among: {TOKENS}")
    file = load_spec(path, overrides)
    out = []
    for token in tokens:
        section = protocol_section(token, seeds)
        rounds = _rounds_overrides(section, file)
        try:
            spec = load_spec(path, [*(overrides or []), f"name={protocol_sweep_name(file.name, token)}",
                                    f"protocol={json.dumps(section)}", *rounds])
        except ConfigError as error:
            raise ConfigError("--protocols", f"{token}: {error}") from None
        out.append((token, spec))
    return out


def _rounds_overrides(section: dict, spec: SweepSpec) -> list[str]:
    """What a per_task or chf sweep changes in the file besides its protocol: each round is ranked by the
    protocol's metric and its trials train one task (no scheduler); chf searches nothing itself, and
    takes its lr grid from ``search.train.lr``: its values, or `CHF_LR_POINTS` log-spaced over its range."""
    if not issubclass(PROTOCOLS[section["name"]], Rounds):
        return []
    out = ["scheduler=fifo"]
    if issubclass(PROTOCOLS[section["name"]], Chf):
        lr = spec.search.get("train.lr")
        if lr is None:
            raise ConfigError("--protocols", "chf tunes train.lr by fine-tuning on a grid it takes from the file's "
                                             "search.train.lr, which this file does not search",
                              "a sweep file that searches train.lr")
        if lr.discrete:
            section["lr"] = list(lr.values)
        else:
            ratio = (lr.high / lr.low) ** (1 / (CHF_LR_POINTS - 1))
            section["lr"] = [float(f"{lr.low * ratio ** i:.3g}") for i in range(CHF_LR_POINTS)]
        out += ["search={}", "algorithm={name: grid, num_samples: 1}"]
    return [f"objective.metric={PROTOCOLS[section['name']](**section).metric}", *out]


def protocol_sweep_name(name: str, token: str) -> str:
    """The name of sweep ``name`` run under protocol ``token``: ``quickstart-prefix2rest``."""
    return f"{name}-{_slug(token)}"


def _slug(token: str) -> str:
    """The protocol's part of its sweep's name: ``prefix:2:rest`` -> ``prefix2rest``, ``two_phase:seed=1``
    -> ``two_phaseseed1``."""
    return token.replace(":", "").replace("=", "")


def run_compare(path: str | Path, tokens: list[str], seeds: int = 3, overrides: Optional[list[str]] = None, *,
                address: Optional[str] = None, num_cpus: Optional[int] = None, tracking_for=None,
                verbose: int = 1) -> tuple[list[dict], Path]:
    """Run (or continue, or read back) every protocol's sweep; return the rows and the folder they were
    written to. ``tracking_for(spec)`` gives each sweep its `sweeps.runner.Tracking` (None: none)."""
    from sweeps import runner
    from sweeps.mlflow_store import STATE_FILE as TRACKING_FILE
    from sweeps.storage import SPEC_FILE, SUMMARY_FILE, load_sweep

    specs = plan(path, tokens, seeds, overrides)
    for token, spec in specs:  # a stored sweep must be this one: checked before anything runs
        stored = spec.experiment_path / SPEC_FILE
        changed = [k for k in SAME_SWEEP
                   if stored.exists() and getattr(SweepSpec.from_yaml(stored), k) != getattr(spec, k)]
        if changed:
            raise FileExistsError(f"{stored.parent} holds this protocol's sweep with other {', '.join(changed)}: "
                                  f"remove it, or give the comparison another name (--set name=...)")
    states = {}
    with runner.ray_session(address, num_cpus):
        for token, spec in specs:
            folder = spec.experiment_path
            tracking = tracking_for(spec) if tracking_for else None
            state = load_sweep(folder) if (folder / SUMMARY_FILE).exists() else None
            if state is not None and state.finished:
                states[token] = state
            elif (folder / SPEC_FILE).exists():
                states[token] = runner.resume_sweep(folder, tracking=tracking)
            else:
                states[token] = runner.run_sweep(spec, tracking=tracking, verbose=verbose)
    rows = table(states)
    first_token, first = specs[0]
    out = first.experiment_path.parent / f"{first.name.removesuffix('-' + _slug(first_token))}-compare"
    write(rows, out)
    files = {f"compare/{name}": out / name for name in COMPARE_FILES if (out / name).exists()}
    for state in states.values():  # beside each tracked sweep's own results in MLflow (the check
        if (state.path / TRACKING_FILE).exists():  # spares an untracked comparison MLflow's import)
            from sweeps.tracking import log_to_parent

            log_to_parent(state.path, files)
    return rows, out


def _chosen(state) -> Optional[dict]:
    """The chosen values: the best trial's, or a schedule's, each key with its values task by task."""
    if state.schedule:
        keys = list(state.schedule[0]["values"])
        return {key: [entry["values"].get(key) for entry in state.schedule] for key in keys}
    best = state.best()
    return dict(best.params) if best else None


def table(states: dict) -> list[dict]:
    """One row per protocol: its evaluation's test metrics, the difference to end_of_training, the cost."""
    rows = []
    for token, state in states.items():
        evaluation = state.evaluation_row()
        metrics = evaluation["metrics"] if evaluation else {}
        task_range = state.spec.evaluation_range or [0, state.spec.example_config().benchmark.n_tasks]
        row = {"protocol": token, "sweep": state.spec.name, "path": str(state.path), "evaluated_on": task_range,
               "chosen": _chosen(state), "seeds": evaluation["seeds"] if evaluation else [],
               **state.cost()}
        for name in COLUMNS:
            value = metrics.get(f"test_{name}")
            row[f"test_{name}"] = value["mean"] if value else None
            row[f"test_{name}_std"] = value["std"] if value else None
        rows.append(row)
    reference = next((r for r in rows if r["protocol"] == "end_of_training"), None)
    for row in rows:  # a difference only between averages over the same tasks
        comparable = reference is not None and row["evaluated_on"] == reference["evaluated_on"] and None not in (
            row["test_average_accuracy"], reference["test_average_accuracy"])
        row["delta_average_accuracy"] = (row["test_average_accuracy"] - reference["test_average_accuracy"]
                                         if comparable else None)
        row["compute_ratio"] = (row["task_trainings"] / reference["task_trainings"]
                                if reference and reference["task_trainings"] else None)
    return rows


def _value(value) -> str:
    """A chosen value for the table: a float to 3 digits, a schedule's values per task joined by ``/``."""
    if isinstance(value, list):
        return "/".join(_value(v) for v in value)
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict]) -> str:
    def pm(row, name):
        mean, std = row[f"test_{name}"], row[f"test_{name}_std"]
        return "-" if mean is None else f"{mean:.4f} ± {std:.4f}"

    def num(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| protocol | evaluated on tasks | test average accuracy | test forgetting | lowest test accuracy right after learning | "
             "Δ average accuracy to end_of_training | task trainings | × end_of_training | clcore seconds | chosen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        chosen = ", ".join(f"{k} {_value(v)}" for k, v in (r["chosen"] or {}).items())
        start, stop = r["evaluated_on"]
        lines.append(f"| {r['protocol']} | {start}..{stop - 1} | {pm(r, 'average_accuracy')} | {pm(r, 'forgetting')} | "
                     f"{pm(r, 'min_accuracy_current_task')} | {num(r['delta_average_accuracy'], '+.4f')} | "
                     f"{r['task_trainings']} | {num(r['compute_ratio'], '.2f')} | {r['clcore_seconds']:.0f} | {chosen} |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], folder: Path) -> None:
    from sweeps import plots

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps(rows, indent=2))
    (folder / "compare.md").write_text(markdown(rows))
    flat = [{k: v for k, v in r.items() if k != "chosen"} | {"chosen": json.dumps(r["chosen"])} for r in rows]
    with (folder / "compare.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    plots.protocols_against_compute(rows, folder / "compare.png")


__all__ = ["run_compare", "plan", "table", "markdown", "protocol_section", "COMPARE_FILES"]
