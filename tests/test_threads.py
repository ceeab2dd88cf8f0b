"""Thread count from free cores, and a warning when the load average makes timings unreliable
(issue #13 item 8)."""

from __future__ import annotations

import torch

from specdec.runners.threads import busy_warning, configure_threads, free_core_threads


def test_threads_fill_only_the_cores_other_processes_leave_free():
    assert free_core_threads(cores=2, load=0.0) == 2
    assert free_core_threads(cores=2, load=1.1) == 1  # one core busy elsewhere: no spin-waiting thread on it
    assert free_core_threads(cores=2, load=7.0) == 1  # never below one
    assert free_core_threads(cores=16, load=3.6) == 12


def test_a_busy_machine_gets_one_line_saying_why_the_figures_are_unreliable():
    assert busy_warning(cores=2, load=0.2) is None
    line = busy_warning(cores=2, load=1.5)
    assert line and "unreliable" in line and "load average 1.50" in line and "\n" not in line


def test_a_users_thread_choice_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert configure_threads(torch.device("cpu")) is None and torch.get_num_threads() == before
    assert configure_threads(torch.device("cuda")) is None
