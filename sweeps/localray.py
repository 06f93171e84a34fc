"""The processes of a local Ray instance that a sweep driver started, so that none outlives it.

`ray.init(address="local")` starts a GCS server, a raylet and its agents (dashboard agent,
runtime-env agent, log monitor) as children of the driver. `ray.shutdown()` ends them when the driver
ends normally or is interrupted (``clsweep`` turns SIGINT and SIGTERM into an orderly stop), but a
driver killed with SIGKILL runs no code, and some agents then live on. So after starting the
instance the driver records its processes (pid and start time, read from ``/proc``) in
``<state dir>/local-ray-<driver pid>.json``; the next driver to start a local instance ends the
processes of every record whose driver is gone, and removes the record. On systems without
``/proc`` nothing is recorded and only `ray.shutdown` applies.

State dir: ``$CLSWEEP_STATE_DIR``, else ``<tmp>/clsweep-<uid>``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger("clsweep.localray")
PROC = Path("/proc")


def state_dir() -> Path:
    return Path(os.environ.get("CLSWEEP_STATE_DIR") or Path(tempfile.gettempdir()) / f"clsweep-{os.getuid()}")


def _processes() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, start time in clock ticks)}`` of every process, from ``/proc``."""
    table = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, ...
        table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def _descendants(root: int, table: dict[int, tuple[int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _record_file(pid: int) -> Path:
    return state_dir() / f"local-ray-{pid}.json"


def children_now() -> set[int]:
    """This process's descendants before `ray.init`: what `record` must leave out (an MLflow server
    the caller started, say)."""
    return set(_descendants(os.getpid(), _processes()))


def record(before: set[int]) -> Optional[Path]:
    """After `ray.init` started a local instance: write down its processes, the descendants of this
    driver that were not there ``before`` and run Ray's programs."""
    table = _processes()
    me = os.getpid()
    if me not in table:
        return None
    pids = [pid for pid in _descendants(me, table) if pid not in before and _is_ray(pid)]
    path = _record_file(me)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"driver": [me, table[me][1]], "processes": [[p, table[p][1]] for p in pids]}))
    return path


def end(path: Optional[Path]) -> None:
    """After `ray.shutdown`: end whatever of the recorded instance is still running, forget the record."""
    if path is not None:
        _end_recorded(path, _processes())


def reap_orphans() -> int:
    """End the processes of local instances whose driver is gone (killed with SIGKILL, say); how many."""
    folder = state_dir()
    if not folder.is_dir():
        return 0
    table = _processes()
    ended = 0
    for path in folder.glob("local-ray-*.json"):
        try:
            driver_pid, driver_start = json.loads(path.read_text())["driver"]
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            continue
        if table.get(driver_pid, (0, None))[1] == driver_start:
            continue  # its driver is alive: that sweep is running
        ended += _end_recorded(path, table)
    if ended:
        log.warning("clsweep: ended %d processes of a local Ray whose sweep driver was killed", ended)
    return ended


def _end_recorded(path: Path, table: dict[int, tuple[int, int]]) -> int:
    """SIGTERM, then SIGKILL after a grace period, to the recorded processes that are still the same
    processes (same start time, so a reused pid is left alone) and to their descendants."""
    try:
        recorded = json.loads(path.read_text())["processes"]
    except (OSError, ValueError, KeyError):
        recorded = []
    alive = [pid for pid, start in recorded if table.get(pid, (0, None))[1] == start]
    targets = sorted({*alive, *(d for pid in alive for d in _descendants(pid, table))})
    _signal(targets, signal.SIGTERM)
    deadline = time.time() + 5
    while time.time() < deadline and any(_running(p) for p in targets):
        time.sleep(0.1)
    _signal([p for p in targets if _running(p)], signal.SIGKILL)
    path.unlink(missing_ok=True)
    return len(targets)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _is_ray(pid: int) -> bool:
    """Whether the command line of ``pid`` runs a program of the ray package (gcs_server, raylet, its agents)."""
    try:
        command = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"ray" in command


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


__all__ = ["children_now", "record", "end", "reap_orphans", "state_dir"]
