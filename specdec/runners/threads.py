"""How many CPU threads to decode with, and whether the machine is too busy to time.

torch uses one thread per core by default. When other processes hold cores, its threads spin
waiting for each other at every parallel region while the scheduler runs someone else: on a
2-core machine with one core busy, `specdec demo` measured 0.31-0.35x "speedups" (baseline
2.2 tok/s against 30.7 quiet) and 1.67x with OMP_NUM_THREADS=1 (issue #13). So specdec asks
for as many threads as there are free cores (cores this process may use minus the 1-minute
load average, at least one), unless the user chose a count (OMP_NUM_THREADS), and says when
the load average makes any timing unreliable.
"""

from __future__ import annotations

import os

import torch

#: Load average per usable core above which timings are called unreliable.
BUSY_LOAD_PER_CORE = 0.5


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def other_load() -> float:
    """The 1-minute load average (runnable processes), 0.0 where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def free_core_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for the cores other processes leave free: ``round(cores - load)``, within 1..cores."""
    cores = usable_cores() if cores is None else cores
    load = other_load() if load is None else load
    return max(1, min(cores, int(cores - load + 0.5)))


def busy_warning(cores: int | None = None, load: float | None = None) -> str | None:
    """One line when the load average says other processes use the CPU, else None."""
    cores = usable_cores() if cores is None else cores
    load = other_load() if load is None else load
    if load < BUSY_LOAD_PER_CORE * cores:
        return None
    return (f"the machine is busy (load average {load:.2f} on {cores} core(s)): other processes take CPU time "
            "from both arms unevenly, so the timings below are unreliable; rerun on a quiet machine")


def configure_threads(device: torch.device) -> str | None:
    """On CPU, set torch's thread count to the free cores (unless the user chose one);
    returns a one-line note of what was done, or None."""
    if torch.device(device).type != "cpu":
        return None
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("SPECDEC_THREADS_KEEP") == "1":
        return None
    threads = free_core_threads()
    if threads == torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    return f"using {threads} CPU thread(s): {usable_cores()} core(s), load average {other_load():.2f} from other processes"
