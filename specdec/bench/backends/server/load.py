"""Open-loop load for server backends, as ``vllm bench serve`` drives it.

Requests leave at their arrival times whether or not earlier ones have finished (``poisson``:
a seeded Poisson process at ``load.rate`` requests/s; ``constant``: one every 1/rate s;
``burst``: all at once), optionally capped at ``load.max_concurrency`` requests in flight
(a request that arrives at the cap waits on the client: ``queue_wait_s``). ``fixed`` sends one
request after another (a closed loop of one), the native backends' default.

A conversation of several turns arrives once; its later turns follow the answers to the earlier
ones at once (they hold their slot under the cap). Every request has its own time limit (the
client's), so a run ends after its last arrival plus at most one time limit per turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from specdec.errors import UsageError
from specdec.bench.workloads import Job, Prompt, poisson_arrivals

OPEN_LOOP_MODES = ("poisson", "constant", "burst")


def rates_of(config) -> list[float | None]:
    """The rates a run sweeps: ``load.rate`` as a list, [None] when the mode has no rate."""
    if config.get("load.mode") not in ("poisson", "constant"):
        return [None]
    rate = config.get("load.rate")
    return list(rate) if isinstance(rate, list) else [rate]


def row_label(method: str, rate: float | None) -> str:
    """The label of a result row: the method's name with ``@rate`` (requests/s) before its
    options, ``speculative@2:gamma=4``, so that ``name:gamma=K`` labels keep ending in K."""
    if rate is None:
        return method
    name, sep, options = method.partition(":")
    return f"{name}@{rate:g}{sep}{options}"


def arrival_offsets(mode: str, rate: float | None, count: int | None, duration: float | None,
                    seed: int) -> list[float] | None:
    """Seconds after the start at which requests arrive (None: ``fixed``, one after another).

    ``duration`` bounds Poisson and constant arrivals in time, ``count`` in number (either or
    both)."""
    if mode == "fixed":
        return None
    if mode == "burst":
        if count is None:
            raise UsageError("load.mode burst sends every prompt at once: it needs a prompt count, not load.duration")
        return [0.0] * count
    if rate is None or rate <= 0:
        raise UsageError(f"load.mode {mode} needs load.rate > 0 (requests/s)")
    if mode == "poisson":
        return poisson_arrivals(rate, seed, duration, count)
    if mode == "constant":
        times, i = [], 0
        while (count is None or i < count) and (duration is None or i / rate < duration):
            times.append(i / rate)
            i += 1
        return times
    raise UsageError(f"unknown load.mode {mode!r}: use fixed, poisson, constant or burst")


def build_jobs(prompts: list[Prompt], mode: str, rate: float | None, repeat: int, count: int | None,
               duration: float | None, seed: int) -> list[Job]:
    """The conversations of one batch. With more arrivals than prompts, prompts cycle and their
    ids get ``~k`` on the k-th reuse (as in the native Poisson mode)."""
    if mode == "fixed":
        return [Job(p, p.id, repeat, None) for p in prompts]
    if count is None and duration is None:
        count = len(prompts)
    offsets = arrival_offsets(mode, rate, count, duration, seed + repeat)
    jobs = []
    for i, at in enumerate(offsets):
        prompt = prompts[i % len(prompts)]
        pid = prompt.id if i < len(prompts) else f"{prompt.id}~{i // len(prompts)}"
        jobs.append(Job(prompt, pid, repeat, at))
    return jobs


async def drive(jobs: list[Job], serve, max_concurrency: int | None = None) -> None:
    """Run ``await serve(job, arrived, waited_s)`` for every job at its arrival time.

    serve: a coroutine function; ``arrived`` is the job's arrival as a ``time.perf_counter``
    value (None in fixed mode), ``waited_s`` the seconds it waited for a slot under the cap.
    Jobs without arrival times (fixed mode) run one after another.
    """
    if all(job.arrival_s is None for job in jobs):
        for job in jobs:
            await serve(job, None, 0.0)
        return
    start = time.perf_counter()
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(job: Job) -> None:
        delay = start + job.arrival_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        arrived = start + job.arrival_s
        async with slots if slots is not None else contextlib.nullcontext():
            await serve(job, arrived, max(0.0, time.perf_counter() - arrived))

    tasks = [asyncio.create_task(one(job)) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # on an error or Ctrl-C: no request keeps running behind our back
        await asyncio.gather(*tasks, return_exceptions=True)
