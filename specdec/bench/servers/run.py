"""A benchmark on a serving engine: for each method, start (or reach) the engine once, warm it
up, then for each repeat and rate send the workload as an open-loop batch, reading the
engine's speculation counters before and after each batch.

Unlike the native backends, methods do not alternate per prompt: one engine serves one method
(its speculation is part of how it was started), so each method is a block of batches. The
baseline and every speculative setting still see the same prompts, seeds and arrival times.

Records are appended to responses.jsonl as each request finishes; a resumed run sends only the
requests not recorded yet (at their original arrival times, so a resumed batch carries less
load than the full one: ``batches`` in server_metrics.json shows it).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from ...errors import UsageError
from .. import results as R
from .launchers import ServerError
from .load import Job, build_jobs, rates_of, row_label
from .summary import add_batch, mark_zero_drafts, read_store


@dataclass
class Batch:
    """One open-loop batch: a method at one rate in one repeat (``row`` labels its results)."""

    spec: object
    rate: float | None
    repeat: int
    row: str
    jobs: list[Job]

    def missing(self, done: dict) -> int:
        return sum(1 for job in self.jobs for t in range(len(job.prompt.turns))
                   if R.record_key(self.row, job.prompt_id, t + 1, job.repeat) not in done)


def plan_batches(config, specs, prompts) -> list[Batch]:
    """Every batch of the run, method by method (rates ascending within a repeat)."""
    offline = config.get("engine.backend") == "vllm"
    mode = "fixed" if offline else config.get("load.mode")
    duration = config.get("load.duration")
    count = config.get("workload.num_prompts") if duration is None else None
    rates = [None] if offline else sorted(rates_of(config), key=lambda r: r or 0.0)
    batches = []
    for spec in specs:
        for repeat in range(config.get("run.repeats")):
            for rate in rates:
                jobs = build_jobs(prompts, mode, rate, repeat, count, duration, config.get("workload.seed"))
                batches.append(Batch(spec, rate, repeat, row_label(spec.label, rate), jobs))
    return batches


def _session_class(config):
    if config.get("engine.backend") == "vllm":
        from .sessions import VllmOfflineSession

        return VllmOfflineSession
    from .sessions import OpenAISession

    return OpenAISession


def run_server_benchmark(runner) -> dict:
    """What :meth:`BenchmarkRunner.run` does for ``engine.backend`` openai / vllm."""
    from ..backends import Models
    from ..monitor import Monitor

    config = runner.config
    specs, prompts = runner.check()
    found = runner.results.prepare(config, runner.overwrite, note=runner._print)
    if found:
        runner._print(f"resuming {runner.results.path}: {found} finished request(s) kept")
    done = {r["key"]: r for r in runner.results.load_records()}
    runner.models = Models(config, runner.log)  # nothing loads: finalize reads its device
    batches = plan_batches(config, specs, prompts)
    _refuse_zero_draft_rows(runner.results.path, batches)
    log = _logger(runner)
    session_class = _session_class(config)
    monitor, session_summary, interrupted = None, None, False
    try:
        monitor = Monitor(runner.models.device, config.get("run.monitor_interval_s"), config.get("run.monitor")).start()
        for spec in specs:
            pending = [b for b in batches if b.spec is spec and b.missing(done)]
            if not pending:
                continue
            with session_class(config, spec, runner.results.path / "server-logs", log) as session:
                session.warmup(prompts[0], config.get("run.warmup"))
                for batch in pending:
                    _run_batch(runner, session, batch, done, monitor, log)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if monitor is not None:
            session_summary = _client_side_only(monitor.stop())
            monitor.close()
    metrics = runner.finalize(session_summary, specs)
    if interrupted:
        raise KeyboardInterrupt
    return metrics


def _run_batch(runner, session, batch: Batch, done: dict, monitor, log) -> None:
    from .sessions import BatchContext

    config = runner.config
    folder = runner.results.path
    before = session.counters()
    energy_before = monitor.energy_j()
    finished: list[dict] = []

    def on_record(record: dict) -> None:
        runner.results.append(record)
        done[record["key"]] = record
        finished.append(record)

    start = time.perf_counter()
    session.run_batch(batch.jobs, BatchContext(config, batch.spec, batch.row, batch.rate, done, on_record))
    wall = time.perf_counter() - start
    after = session.counters()
    energy_after = monitor.energy_j()
    reading = {"repeat": batch.repeat, "requests": len(finished), "wall_s": wall,
               "energy_j": energy_after - energy_before if None not in (energy_before, energy_after) else None}
    if before.counters is not None and after.counters is not None:
        reading["counters"] = after.counters.minus(before.counters).to_dict()
    else:
        reading["reason"] = after.reason or before.reason
    add_batch(folder, batch.row, batch.spec.label, session.serving, reading)
    failed = [r for r in finished if not r.get("ok", True)]
    log(f"{batch.row}: {len(finished)} request(s) in {wall:.1f} s, {len(failed)} failed")
    for error, count in _count(r["error"] for r in failed):
        log(f"  {count}x {error}")
    session.check_alive()
    drafts = (reading.get("counters") or {}).get("drafts")
    if batch.spec.backend != "target" and drafts == 0 and len(failed) < len(finished):
        mark_zero_drafts(folder, batch.row)
        where = f"; server log: {session.log_path}" if session.log_path else ""
        raise ServerError(f"{batch.row}: {session.serving} reported 0 drafts although a draft was configured, so this "
                          f"is not a speculative result (check the drafting flags: specdec bench --dry-run){where}")


def _refuse_zero_draft_rows(folder, batches) -> None:
    store = read_store(folder)
    for batch in batches:
        if (store.get(batch.row) or {}).get("zero_drafts"):
            raise UsageError(f"{folder} holds a run in which {batch.row}'s server drafted nothing; fix the drafting "
                             "settings and run again with --overwrite")


def _client_side_only(session: dict | None) -> dict | None:
    """The monitor measures this process; the server's memory is not ours to report."""
    if session and session.get("kind") == "cpu":
        for device in (session.get("devices") or {}).values():
            if isinstance(device, dict) and "peak_rss_bytes" in device:
                device["peak_rss_bytes"] = None
        session["note"] = "server run: CPU figures are the client's; the server's memory is not measured"
    return session


def _count(items) -> list[tuple[str, int]]:
    from collections import Counter

    return Counter(items).most_common()


def _logger(runner):
    """Lines for the user: through the runner's console, or stderr when it has none."""
    def log(message: str) -> None:
        if runner.console is not None:
            runner.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    return log
