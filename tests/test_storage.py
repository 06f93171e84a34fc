"""A sweep folder read back from the project's own JSON files: no Ray, and no pickle ever opened.

Ray's experiment snapshots embed cloudpickle payloads and ``tuner.pkl`` is a pickle: unpickling a
crafted one runs its code. ``clsweep status`` (and `load_sweep`, which ``sync`` uses) must read only
``sweep.yaml``, ``trials.jsonl`` and the trials' ``tasks.jsonl``.
"""

from __future__ import annotations

import binascii
import json
import pickle
import subprocess
import sys
from pathlib import Path

import yaml

from sweeps.spec import SweepSpec
from sweeps.storage import (CHECKPOINT_DIRS, SPEC_FILE, SUMMARY_FILE, TASKS_FILE, TRIALS_FILE, folder_bytes, load_sweep,
                            trial_dirname)

from test_spec import small


class _Payload:
    """Unpickling this creates ``marker``: proof that someone unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def task_row(trial_id: str, k: int, value: float) -> dict:
    return {"tasks_seen": k, "val_average_accuracy": value, "epochs_trained": k, "trial_id": trial_id,
            "config": {"strategy.lambda": 10.0 * k, "strategy.decay_factor": 0.9, "train.lr": 0.01}}


def crafted_sweep(folder: Path, marker: Path) -> Path:
    path = folder / "crafted"
    path.mkdir()
    SweepSpec.from_dict(small()).to_yaml(path / SPEC_FILE)
    blob = binascii.hexlify(pickle.dumps(_Payload(marker))).decode()
    # What Ray's ExperimentAnalysis would expand (its CLOUDPICKLE_FALLBACK) and what Tuner.restore unpickles
    (path / "experiment_state-2026-12-01_00-00-00.json").write_text(
        json.dumps({"trial_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": blob}}))
    (path / "tuner.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    params = {"strategy.lambda": 1.0, "strategy.decay_factor": 0.9, "train.lr": 0.01}
    events = [{"event": "start", "trial_id": "a", "params": params},
              {"event": "start", "trial_id": "b", "params": params},
              {"event": "end", "trial_id": "a", "status": "TERMINATED", "params": params, "num_failures": 0,
               "error": None, "wall_seconds": 3.5},
              {"event": "start", "trial_id": "c", "params": params},
              {"event": "end", "trial_id": "c", "status": "ERROR", "params": params, "num_failures": 1,
               "error": "TrainingDivergedError: non-finite loss", "wall_seconds": 1.0}]
    (path / TRIALS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "end", "tri')
    for trial_id, tasks in (("a", 5), ("b", 2), ("d", 1)):  # d: reported, but not in the ledger yet
        folder = path / trial_dirname(trial_id)
        folder.mkdir()
        (folder / TASKS_FILE).write_text("".join(json.dumps(task_row(trial_id, k, 0.5 + k / 10)) + "\n"
                                                 for k in range(1, tasks + 1)))
        (folder / "params.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    return path


def test_load_sweep_reads_the_ledger_and_tasks_files_only(tmp_path):
    marker = tmp_path / "unpickled"
    state = load_sweep(crafted_sweep(tmp_path, marker))
    assert not marker.exists()
    by_id = {t.trial_id: t for t in state.trials}
    assert sorted(by_id) == ["a", "b", "c", "d"]
    assert {k: t.outcome for k, t in by_id.items()} == {"a": "complete", "b": "running", "c": "failed",
                                                       "d": "running"}
    assert by_id["a"].wall_seconds == 3.5 and by_id["a"].tasks_seen == 5
    assert by_id["c"].error == "TrainingDivergedError: non-finite loss" and by_id["c"].num_failures == 1
    assert by_id["d"].params["strategy.lambda"] == 10.0  # from its tasks.jsonl: the config at that task
    assert state.best().trial_id == "a"


def test_status_runs_no_code_from_a_crafted_folder_and_imports_no_ray(tmp_path):
    marker = tmp_path / "unpickled"
    path = crafted_sweep(tmp_path, marker)
    script = ("import sys\n"
              "sys.modules['ray'] = None  # any import of ray now raises ImportError\n"
              "from sweeps.cli import main\n"
              "sys.exit(main(['status', sys.argv[1], '--json']))\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists(), "clsweep status unpickled a file of the sweep folder"
    summary = json.loads(done.stdout)
    assert summary["counts"] == {"complete": 1, "running": 2, "failed": 1}
    assert yaml.safe_load((path / SPEC_FILE).read_text())["name"] == summary["name"]


def test_status_ranks_only_complete_trials_and_shows_the_tasks_behind_each_score(tmp_path, capsys):
    from sweeps.cli import main

    path = crafted_sweep(tmp_path, tmp_path / "unpickled")
    worse = path / trial_dirname("e")  # complete, but a lower score than a's 1.0 after 5/5 tasks
    worse.mkdir()
    (worse / TASKS_FILE).write_text("".join(json.dumps({**task_row("e", k, 0.5), "val_average_accuracy": 0.6})
                                            + "\n" for k in range(1, 6)))
    with (path / TRIALS_FILE).open("a") as f:  # after the cut-off line the killed writer left
        f.write('\n{"event": "end", "trial_id": "e", "status": "TERMINATED", "params": {}, "num_failures": 0}\n')
    (path / SUMMARY_FILE).write_text(json.dumps({"wall_seconds": 12.5}))
    assert main(["status", str(path)]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()[1:6]]
    assert [row[:3] for row in table] == [["1", "a", "complete"], ["2", "e", "complete"], ["-", "b", "running"],
                                         ["-", "d", "running"], ["-", "c", "failed"]]
    assert table[0][3:5] == ["1.0000", "(5/5)"] and table[2][3:5] == ["0.7000", "(2/5)"]
    assert main(["status", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["wall_seconds"] == 12.5  # as the driver's summary.json says


def test_pruning_keeps_the_checkpoints_a_resume_reads_and_the_best_trials_newest(tmp_path):
    path = crafted_sweep(tmp_path, tmp_path / "unpickled")
    (path / trial_dirname("c")).mkdir()  # the failed trial: a resume with --errored resume continues it
    for trial_id in "abcd":
        for k in range(3):
            folder = path / trial_dirname(trial_id) / f"checkpoint_{k:06d}"
            folder.mkdir()
            (folder / "checkpoint.pt").write_bytes(b"x" * 1000)
    state = load_sweep(path)
    assert state.prune_checkpoints() == 2000  # a's two older ones
    left = {t: sorted(p.name for p in (path / trial_dirname(t)).glob(CHECKPOINT_DIRS)) for t in "abcd"}
    assert left == {"a": ["checkpoint_000002"], "b": [f"checkpoint_{k:06d}" for k in range(3)],
                    "c": [f"checkpoint_{k:06d}" for k in range(3)], "d": [f"checkpoint_{k:06d}" for k in range(3)]}
    assert state.to_summary()["storage_bytes"] == folder_bytes(path) > 10_000


def test_the_summary_warns_when_the_best_trial_learned_a_task_only_to_near_chance(tmp_path, capsys):
    from sweeps.cli import main

    path = crafted_sweep(tmp_path, tmp_path / "unpickled")
    diagonal = [0.99, 0.55, 0.98, 0.97, 0.99]  # synthetic task-IL: 2 classes per task, chance 0.5
    matrix = [[diagonal[i] if j == i else 0.9 for j in range(5)] for i in range(5)]
    folder = path / trial_dirname("f")
    folder.mkdir()
    (folder / TASKS_FILE).write_text("".join(json.dumps({**task_row("f", k, 0.0), "val_average_accuracy": 1.5,
                                                         "val_forgetting": 0.01, "val_matrix": matrix[:k]}) + "\n"
                                             for k in range(1, 6)))
    with (path / TRIALS_FILE).open("a") as f:
        f.write('\n{"event": "end", "trial_id": "f", "status": "TERMINATED", "params": {}, "num_failures": 0}\n')
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "best trial f: val_average_accuracy = 1.5000" in out
    assert "val forgetting 0.0100, accuracy on the task just learned 0.9900, lowest right after learning 0.5500 " \
           "(task 1: 0.5500, chance 0.5000)" in out
    assert "warning: the best trial learned task 1 only to 0.5500 (chance 0.5000): it may have stopped learning" in out


def test_a_sweep_is_finished_once_every_trial_ended_and_a_round_protocol_has_its_whole_schedule(tmp_path):
    """`SweepState.finished`: the one rule `clsweep compare` (read back, not resumed) and MLflow (the parent
    closed FINISHED, not KILLED) both read."""
    from sweeps.storage import SweepState, TrialRecord

    def trial(trial_id, status, tasks):
        return TrialRecord(trial_id, status, {}, [task_row(trial_id, k, 0.5) for k in range(1, tasks + 1)],
                           str(tmp_path / trial_id), n_tasks=5)

    spec = SweepSpec.from_dict(small())
    assert not SweepState(spec, tmp_path).finished  # no trial yet
    assert not SweepState(spec, tmp_path, [trial("a", "TERMINATED", 5), trial("b", "RUNNING", 2)]).finished
    assert SweepState(spec, tmp_path, [trial("a", "TERMINATED", 5), trial("b", "TERMINATED", 2)]).finished

    rounds = SweepSpec.from_dict({**small(), "protocol": {"name": "per_task"}, "scheduler": {"name": "fifo"},
                                  "objective": {"metric": "val_accuracy_current_task", "mode": "max"}})
    played = [SweepState(rounds, tmp_path, [trial(f"r{t}", "TERMINATED", t + 1)]) for t in range(5)]
    schedule = [{"task": t, "trial_id": f"r{t}", "value": 0.5, "values": {"train.lr": 0.1}} for t in range(5)]
    assert not SweepState(rounds, tmp_path, rounds=played, schedule=schedule[:4]).finished  # round 4 kept nothing
    assert not SweepState(rounds, tmp_path, rounds=played[:4], schedule=schedule[:4]).schedule_complete
    done = SweepState(rounds, tmp_path, rounds=played, schedule=schedule)
    assert done.schedule_complete and done.finished
    played[2].trials.append(trial("r2b", "RUNNING", 1))  # a round trial still out: not finished
    assert not done.finished
