"""The run lock is atomic: real processes racing for one folder's lock, exactly one wins (issue 11, case 8).

Four worker processes wait on a shared start signal per trial, then all call ``acquire_lock`` on the
same folder at once; each reports whether it won, and winners hold the lock until every worker has
tried. Trials cover a fresh folder, a stale lock left by a dead process on this host (taken over by
exactly one), and a lock of a live process (nobody wins, each gets the "being written by" message).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N_WORKERS = 4
N_TRIALS = 24

WORKER = r"""
import os, sys, time
from pathlib import Path
from ic_core.errors import DataError
from ic_core.runs.lock import acquire_lock, release_lock

base, me, n_trials = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def wait_for(path):
    while not path.exists():
        time.sleep(0.0002)

for t in range(n_trials):
    folder = base / f"trial{t}"
    wait_for(base / f"go{t}")
    try:
        acquire_lock(folder)
        result = "won"
    except DataError as exc:
        result = "lost " + str(exc)
    (base / f"result{t}-{me}.tmp").write_text(result)
    os.replace(base / f"result{t}-{me}.tmp", base / f"result{t}-{me}")
    wait_for(base / f"done{t}")
    if result == "won":
        release_lock(folder)
    (base / f"released{t}-{me}").write_text("")
"""


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, pid: int) -> None:
    (folder / "run.lock").write_text(json.dumps({"pid": pid, "host": platform.node(), "started": "t"}))


def _race(tmp_path: Path, prepare) -> list[list[str]]:
    """Run N_TRIALS races of N_WORKERS processes; ``prepare(folder)`` sets each trial's folder up."""
    for t in range(N_TRIALS):
        folder = tmp_path / f"trial{t}"
        folder.mkdir()
        prepare(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(w), str(N_TRIALS)],
                                cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for w in range(N_WORKERS)]
    results = []
    try:
        time.sleep(1.0)  # let every worker import and start polling
        for t in range(N_TRIALS):
            (tmp_path / f"go{t}").write_text("")
            paths = [tmp_path / f"result{t}-{w}" for w in range(N_WORKERS)]
            _wait(paths, workers)
            results.append([p.read_text() for p in paths])
            (tmp_path / f"done{t}").write_text("")
            _wait([tmp_path / f"released{t}-{w}" for w in range(N_WORKERS)], workers)
        for proc in workers:
            assert proc.wait(timeout=30) == 0, proc.stderr.read()[-2000:]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _wait(paths: list[Path], workers, timeout: float = 30.0) -> None:
    """Wait until every path exists; fail at once if a worker crashed."""
    end = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        crashed = [p for p in workers if p.poll() not in (None, 0)]
        if crashed:
            pytest.fail(f"a worker crashed: {crashed[0].stderr.read()[-2000:]}")
        if time.monotonic() > end:
            pytest.fail("the workers did not answer in time")
        time.sleep(0.001)


class TestLockRace:
    def test_exactly_one_of_four_processes_wins_a_fresh_folder(self, tmp_path):
        results = _race(tmp_path, lambda folder: None)
        winners = [r.count("won") for r in results]
        assert winners == [1] * N_TRIALS
        losers = [x for r in results for x in r if x != "won"]
        assert len(losers) == (N_WORKERS - 1) * N_TRIALS
        assert all(x.startswith("lost Run 'trial") and "is being written by process" in x for x in losers)

    def test_a_dead_writers_lock_is_taken_over_by_exactly_one(self, tmp_path):
        dead = _dead_pid()
        results = _race(tmp_path, lambda folder: _write_lock(folder, dead))
        assert [r.count("won") for r in results] == [1] * N_TRIALS
        assert not any(f"process {dead} " in x for r in results for x in r)  # the dead owner is never named
        assert not list(tmp_path.glob("trial*/run.lock"))  # every winner released its lock

    def test_a_live_writers_lock_lets_nobody_in(self, tmp_path):
        live = os.getpid()  # this test process: alive, and not one of the workers
        results = _race(tmp_path, lambda folder: _write_lock(folder, live))
        assert [r.count("won") for r in results] == [0] * N_TRIALS
        assert all(x.startswith("lost Run 'trial") and f"being written by process {live} on" in x
                   for r in results for x in r)
        assert all(json.loads((tmp_path / f"trial{t}" / "run.lock").read_text())["pid"] == live
                   for t in range(N_TRIALS))
