"""Thread count from the cores other processes leave free now, and a warning when they make
timings unreliable (issue #13 item 8, issue #19 item 7)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from specdec.runners import threads
from specdec.runners.threads import busy_warning, configure_threads, free_core_threads, other_cpu_use


def test_threads_fill_only_the_cores_other_processes_leave_free():
    assert free_core_threads(cores=2, load=0.0) == 2
    assert free_core_threads(cores=2, load=1.1) == 1  # one core busy elsewhere: no spin-waiting thread on it
    assert free_core_threads(cores=2, load=7.0) == 1  # never below one
    assert free_core_threads(cores=16, load=3.6) == 12


def test_a_busy_machine_gets_one_line_saying_why_the_figures_are_unreliable():
    assert busy_warning(cores=2, load=0.2) is None
    line = busy_warning(cores=2, load=1.5)
    assert line and "unreliable" in line and "use 1.50 of 2 core(s)" in line and "\n" not in line


def test_a_users_thread_choice_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert configure_threads(torch.device("cpu")) is None and torch.get_num_threads() == before
    assert configure_threads(torch.device("cuda")) is None


def _spinner(seconds: float) -> subprocess.Popen:
    """A real process that keeps one core busy for ``seconds``."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_busy_process_counts_and_this_process_does_not():
    """Issue #19 item 7: other processes' CPU use is measured now; this one's own is left out."""
    quiet = other_cpu_use(0.3)
    if quiet > threads.usable_cores() - 1.0:
        pytest.skip(f"other processes already use {quiet:.2f} core(s): no free core to see a spinner on")
    spinner = _spinner(5.0)
    try:
        time.sleep(0.3)
        busy = other_cpu_use(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy >= quiet + 0.6, f"a spinning process added only {busy - quiet:.2f} core(s)"
    # This process spinning is not "another process".
    import threading

    stop = time.time() + 0.6
    spin = threading.Thread(target=lambda: [None for _ in iter(lambda: time.time() < stop, False)])
    spin.start()
    mine = other_cpu_use(0.4)
    spin.join()
    assert mine < quiet + 0.5, f"this process's own thread counted as {mine - quiet:.2f} core(s) of others"


def test_a_process_that_just_finished_does_not_count():
    """The 1-minute load average still shows work that ended seconds ago; the measure does not."""
    spinner = _spinner(1.5)
    spinner.wait()
    after = other_cpu_use(0.3)
    load = os.getloadavg()[0]
    assert after < 0.6 or after < load - 0.3, (after, load)


def test_threads_follow_what_is_free_now(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "other_cpu_use", lambda window_s=0.3: 0.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        note = threads.configure_threads(torch.device("cpu"))
        assert torch.get_num_threads() == 2 and "other processes use 0.00 core(s) now" in note
        assert threads.busy_warning() is None
    finally:
        torch.set_num_threads(before)
