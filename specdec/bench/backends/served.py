"""What the backends whose engine is not ours share (an OpenAI-compatible server, ``vllm.LLM``):
one engine per method, started when the method's block begins and stopped after it; the
engine's own speculation counters read before and after each batch (their difference goes to
``server_metrics.json``); a method configured to draft whose engine drafted nothing stops the
run instead of being reported as speculation.

A subclass provides ``_start()`` / ``_stop()``, ``counters() -> Scrape``, ``_send(jobs,
BatchContext)`` and the attributes ``serving`` (what ran, for the records) and ``log_path``.
"""

from __future__ import annotations

import time
from collections import Counter

from specdec.bench.backends.base import Batch, MethodSpec, RunContext
from specdec.bench.backends.server.checks import server_ignored
from specdec.bench.backends.server.launchers import ServerError
from specdec.bench.backends.server.server_metrics import Scrape
from specdec.bench.backends.server.settings import drafting_for
from specdec.bench.backends.server.summary import add_batch, mark_zero_drafts, read_store
from specdec.bench.workloads import Prompt
from specdec.errors import UsageError


class BatchContext:
    """What a batch's records need besides the result: its row label, rate and mode."""

    def __init__(self, config, spec, row: str, rate: float | None, done: dict, on_record) -> None:
        self.config = config
        self.spec = spec
        self.row = row
        self.rate = rate
        self.done = done
        self.on_record = on_record
        self.gamma = drafting_for(config, spec.backend, spec.gamma).gamma if spec.backend != "target" else None
        self.greedy = config.get("generation.temperature") <= 1e-6
        self.mode = config.get("load.mode")


class ServedBackend:
    """Base of the backends that drive an engine of their own (see the module docstring)."""

    in_process = False
    serving = "?"
    log_path = None
    _noted: set = set()  # notes already shown in this process (say once)

    def __init__(self, spec: MethodSpec, run: RunContext) -> None:
        self.spec = spec
        self.name = spec.backend
        self.run = run
        self.config = run.config
        self.log = run.log
        self.engine_info: dict = {}  # what the engine says it ran (dtype, environment, notes): server_metrics.json

    def _note(self, line: str) -> None:
        """A line for the user and the report, once per process."""
        self.engine_info.setdefault("notes", []).append(line)
        if line not in ServedBackend._noted:
            ServedBackend._noted.add(line)
            self.log(line)

    # --- what subclasses provide -----------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def counters(self) -> Scrape:
        raise NotImplementedError

    def check_alive(self) -> None:
        """Raise ServerError when the engine has stopped."""

    def _send(self, jobs, ctx: BatchContext) -> None:
        raise NotImplementedError

    # --- the Backend interface --------------------------------------------------------------
    def __enter__(self):
        entry = read_store(self.run.folder)
        for row, figures in entry.items():
            if figures.get("zero_drafts") and figures.get("method") == self.spec.label:
                raise UsageError(f"{self.run.folder} holds a run in which {row}'s server drafted nothing; fix the "
                                 "drafting settings and run again with --overwrite")
        try:
            self._start()
        except BaseException:  # Ctrl-C or an error after the engine started: stop it
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._stop()
        return False

    def admit(self, prompts: list[Prompt]) -> list[Prompt]:
        return prompts  # the engine decides what fits; a request it refuses is a failed record

    @classmethod
    def ignored_options(cls, spec, config) -> list[str]:
        return server_ignored(config, spec)

    def run_batch(self, batch: Batch, on_record) -> None:
        """Send the batch, then record the engine's counters over it, the wall time, the energy
        and the failures, and refuse a speculative method whose engine drafted nothing."""
        monitor = self.run.monitor
        folder = self.run.folder
        finished: list[dict] = []

        def record(entry: dict) -> None:
            finished.append(entry)
            on_record(entry)

        before = self.counters()
        energy_before = monitor.energy_j() if monitor is not None else None
        start = time.perf_counter()
        self._send(batch.jobs, BatchContext(self.config, batch.spec, batch.row, batch.rate, batch.done, record))
        wall = time.perf_counter() - start
        after = self.counters()
        energy_after = monitor.energy_j() if monitor is not None else None
        reading = {"repeat": batch.repeat, "requests": len(finished), "wall_s": wall,
                   "energy_j": energy_after - energy_before if None not in (energy_before, energy_after) else None}
        if before.counters is not None and after.counters is not None:
            reading["counters"] = after.counters.minus(before.counters).to_dict()
        else:
            reading["reason"] = after.reason or before.reason
        add_batch(folder, batch.row, batch.spec.label, self.serving, reading, info=self.engine_info)
        failed = [r for r in finished if not r.get("ok", True)]
        self.log(f"{batch.row}: {len(finished)} request(s) in {wall:.1f} s, {len(failed)} failed")
        for error, count in Counter(r["error"] for r in failed).most_common():
            self.log(f"  {count}x {error}")
        self.check_alive()
        drafts = (reading.get("counters") or {}).get("drafts")
        if batch.spec.backend != "target" and drafts == 0 and len(failed) < len(finished):
            mark_zero_drafts(folder, batch.row)
            where = f"; server log: {self.log_path}" if self.log_path else ""
            raise ServerError(f"{batch.row}: {self.serving} reported 0 drafts although a draft was configured, so this "
                              f"is not a speculative result (check the drafting flags: specdec bench --dry-run){where}")
