"""How many CPU threads to decode with, and whether the machine is too busy to time.

torch uses one thread per core by default. When other processes hold cores, its threads spin
waiting for each other at every parallel region while the scheduler runs someone else: on a
2-core machine with one core busy, `specdec demo` measured 0.31-0.35x "speedups" (baseline
2.2 tok/s against 30.7 quiet) and 1.67x with OMP_NUM_THREADS=1 (issue #13). So specdec asks
for as many threads as there are free cores (cores this process may use minus the cores other
processes use now, at least one), unless the user chose a count (OMP_NUM_THREADS), and says
when other processes make any timing unreliable.

"Now" is measured, not read from the load average: the 1-minute load average still counts a
set-up that finished seconds ago and this process itself (issue #19: a second ``specdec demo``
right after the first called the machine busy because of the first). :func:`other_cpu_use`
samples the machine's busy CPU time over a short window and subtracts this process's own.
"""

from __future__ import annotations

import os
import time

import psutil
import torch

#: Load average per usable core above which timings are called unreliable.
BUSY_LOAD_PER_CORE = 0.5


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: Seconds over which other processes' CPU use is sampled (once per command).
SAMPLE_SECONDS = 0.3


def other_cpu_use(window_s: float = SAMPLE_SECONDS) -> float:
    """Cores' worth of CPU time that processes other than this one use now, averaged over
    ``window_s`` seconds (0.0 .. number of CPUs): the machine's busy time (all CPUs, from the
    OS's counters) minus this process's own, over the wall time."""
    me = psutil.Process()

    def busy_and_own() -> tuple[float, float]:
        total = psutil.cpu_times()
        # guest / guest_nice are already inside user / nice on Linux; steal is time the
        # hypervisor gave to someone else, a core this machine did not have.
        busy = sum(getattr(total, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
        own = me.cpu_times()
        return busy, own.user + own.system

    busy0, own0 = busy_and_own()
    start = time.perf_counter()
    time.sleep(window_s)
    busy1, own1 = busy_and_own()
    wall = time.perf_counter() - start
    return max(0.0, (busy1 - busy0 - (own1 - own0)) / wall)


def other_load() -> float:
    """Cores other processes use now (:func:`other_cpu_use`); the 1-minute load average where
    the OS gives no CPU counters."""
    try:
        return other_cpu_use()
    except (psutil.Error, OSError, AttributeError):
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
    """One line when other processes use the CPU now (``load``: cores they use), else None."""
    cores = usable_cores() if cores is None else cores
    load = other_load() if load is None else load
    if load < BUSY_LOAD_PER_CORE * cores:
        return None
    return (f"the machine is busy (other processes use {load:.2f} of {cores} core(s) now): they take CPU time "
            "from both arms unevenly, so the timings below are unreliable; rerun on a quiet machine")


def configure_threads(device: torch.device) -> str | None:
    """On CPU, set torch's thread count to the free cores (unless the user chose one);
    returns a one-line note of what was done, or None."""
    if torch.device(device).type != "cpu":
        return None
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("SPECDEC_THREADS_KEEP") == "1":
        return None
    load = other_load()
    threads = free_core_threads(load=load)
    if threads == torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    return f"using {threads} CPU thread(s): {usable_cores()} core(s), other processes use {load:.2f} core(s) now"
