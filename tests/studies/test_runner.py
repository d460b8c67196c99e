"""The cell runner with stand-in cell processes (plain Python one-liners, no training): at most N at a time, the
CPU threads split, one log per cell, failures reported per cell, Ctrl-C passed on to the running cells."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from zoo.studies.matrix import Cell
from zoo.studies.runner import python_entry, run_cells, threads_per_cell

CELLS = [Cell("s", v, seed) for seed in (0, 1) for v in ("a", "b")]

WORKER = """
import json, os, sys, time
start = time.time()
time.sleep(0.4)
print(json.dumps({"start": start, "end": time.time(), "omp": os.environ["OMP_NUM_THREADS"],
                  "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}))
sys.exit(3 if sys.argv[1] == "s/b/seed1" else 0)
"""


def test_runs_at_most_n_at_once_with_split_threads_and_one_log_each(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    outcomes = run_cells(CELLS, tmp_path, lambda c: [sys.executable, str(worker), c.id], jobs=2, poll_s=0.02)
    assert [o.cell for o in outcomes] == CELLS
    assert [o.returncode for o in outcomes] == [0, 0, 0, 3]
    records = []
    for cell in CELLS:
        lines = cell.log_file(tmp_path).read_text().splitlines()
        assert lines[0].startswith("$ ") and lines[0].endswith(cell.id)  # the command, then the cell's output
        records.append(json.loads(lines[1]))
    assert {r["omp"] for r in records} == {"2"}  # 4 threads / 2 jobs
    assert {r["gpu"] for r in records} == {"0", "1"}  # one visible GPU per slot
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2


def test_threads_and_entry_point(tmp_path):
    assert threads_per_cell(3, total=8) == 2 and threads_per_cell(16, total=4) == 1
    script = tmp_path / "train.py"
    script.write_text("")
    assert python_entry(str(script)) == [sys.executable, str(script.resolve())]
    assert python_entry("/usr/bin/pytest")[1] == "-c"


READY_THEN_WAIT = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "w").write("SIGINT")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(60)
"""


def test_ctrl_c_is_passed_to_the_running_cells(tmp_path):
    cells = CELLS[:2]

    def ctrl_c_when_ready():  # the user's Ctrl-C reaches this process once both cells listen for it
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            logs = [c.log_file(tmp_path) for c in cells]
            if all(p.is_file() and "ready" in p.read_text().splitlines() for p in logs):
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    marks = {c: tmp_path / f"{c.variant}.mark" for c in cells}
    worker = tmp_path / "worker.py"
    worker.write_text(READY_THEN_WAIT)
    threading.Thread(target=ctrl_c_when_ready, daemon=True).start()
    def swallow(*_):  # a handler installed before (one that only sets a flag): the runner must not depend on it
        pass

    previous = signal.signal(signal.SIGINT, swallow)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_cells(cells, tmp_path, lambda c: [sys.executable, str(worker), str(marks[c])], jobs=2, poll_s=0.05)
        assert signal.getsignal(signal.SIGINT) is swallow  # and it is given back afterwards
    finally:
        signal.signal(signal.SIGINT, previous)
    assert all(m.read_text() == "SIGINT" for m in marks.values())  # each cell got one SIGINT and stopped cleanly
