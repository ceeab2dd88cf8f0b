"""The benchmark loop: load the workload, load each model once, warm up, then serve every prompt
with every method in turn (A B A B), appending one record per finished request.

From Python::

    from specdec.bench import BenchmarkRunner
    summary = BenchmarkRunner("bench.yaml", output_dir="runs/a", **{"generation.max_tokens": 64}).run()

The same precedence as the command line: defaults < config file < environment variables <
keyword overrides (dotted keys).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
import torch

from ..devices import resolve_device
from ..errors import ContextOverflow, UsageError
from ..placement import plan_placement
from ..threads import busy_warning, configure_threads
from . import results as R
from .backends import Models, batch_size, check_methods, generation_config, make_backend
from .config import BenchConfig, load_config
from .manifest import manifest
from .metrics import summarize
from .monitor import Monitor
from .servers import is_server_backend
from .servers.summary import is_server_run as is_server_records, server_summary
from .workloads import SKIPPED as WORKLOAD_SKIPPED
from .workloads import Prompt, encode_turns, load_workload, poisson_arrivals


def skipped_record(reason: str, prompt_tokens: int) -> dict:
    """The record of a request that was not run (it does not fit the context, or an earlier turn
    of its conversation did not): kept in responses.jsonl so a resume does not retry it, counted
    by the summary, left out of every figure."""
    return {"skipped": reason, "prompt_tokens": prompt_tokens, "text": "", "token_ids": [],
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}


@dataclass
class Job:
    """One request of the schedule: a prompt, its repeat index and (Poisson) arrival time."""

    prompt: Prompt
    prompt_id: str
    repeat: int
    arrival_s: float | None = None


def build_schedule(config: BenchConfig, prompts: list[Prompt]) -> list[Job]:
    """Fixed mode: every prompt once per repeat. Poisson mode: arrivals of a seeded Poisson
    process (per repeat), each taking the next prompt (cycling; ids get ``~k`` on reuse)."""
    jobs = []
    for repeat in range(config.get("run.repeats")):
        if config.get("load.mode") == "poisson":
            duration = config.get("load.duration")
            count = config.get("workload.num_prompts") if duration is None else None
            if duration is None and count is None:
                count = len(prompts)
            arrivals = poisson_arrivals(config.get("load.rate"), config.get("workload.seed") + repeat, duration, count)
            for i, at in enumerate(arrivals):
                prompt = prompts[i % len(prompts)]
                pid = prompt.id if i < len(prompts) else f"{prompt.id}~{i // len(prompts)}"
                jobs.append(Job(prompt, pid, repeat, at))
        else:
            jobs.extend(Job(p, p.id, repeat) for p in prompts)
    return jobs


def request_seed(base: int, prompt_id: str, turn: int, repeat: int) -> int:
    """The same seed for every method on one (prompt, turn, repeat), different across them."""
    return (base + zlib.crc32(f"{prompt_id}|{turn}|{repeat}".encode())) % (2**63)


class BenchmarkRunner:
    """Runs one benchmark into ``output_dir`` (resuming what is there) and returns its summary.

    config: a :class:`BenchConfig`, a config file path, or a nested dict.
    overrides: dotted keys applied after the environment (like command-line flags).
    environ: the environment mapping to read (default ``os.environ``).
    """

    def __init__(self, config=None, output_dir=None, overwrite: bool = False, console=None, progress: bool = True,
                 environ=None, **overrides) -> None:
        if isinstance(config, BenchConfig):
            self.config = config
            for key, value in overrides.items():
                if value is not None:
                    self.config.set(key, value, "keyword argument")
        elif isinstance(config, dict):
            self.config = load_config(base=config, flags=overrides, environ=environ)
        else:
            self.config = load_config(config, flags=overrides, environ=environ)
        if output_dir is None:
            raise UsageError("no output folder: pass --output-dir DIR")
        self.results = R.ResultsDir(output_dir)
        self.overwrite = overwrite
        self.console = console
        self.show_progress = progress
        self.log = lambda message: self._print(f"[dim]{message}[/dim]")

    def _print(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)

    # ---------------------------------------------------------------------------------------
    def check(self):
        """Everything that can fail without a model: config, methods, prompts."""
        self.config.validate()
        specs = check_methods(self.config)
        # An impossible GPU placement is a usage error before anything loads.
        plan_placement(self.config.get("engine.gpu_strategy"), resolve_device(self.config.get("engine.device")),
                       self.config.get("engine.target_gpu_ratio"), self.config.get("engine.drafter_gpu_ratio"))
        prompts = load_workload(self.config)
        self.workload_skipped = dict(WORKLOAD_SKIPPED)
        for reason, count in self.workload_skipped.items():
            self._print(f"left out {count} record(s) of the prompt file: {reason}")
        return specs, prompts

    def run(self) -> dict:
        """Run (or resume) the benchmark; returns the metrics dict also saved as metrics.json.

        On Ctrl-C the finished requests are kept, the aggregates are written, and
        KeyboardInterrupt propagates; running again resumes.
        """
        # One run per folder at a time: a second is refused, naming the process that holds it.
        self._lock = self.results.lock()
        try:
            if is_server_backend(self.config):  # serving engines (issue #12): open-loop load on a server
                from .servers.run import run_server_benchmark

                return run_server_benchmark(self)
            return self._run(*self.check())
        finally:
            self._lock.release()

    def _run(self, specs, prompts) -> dict:
        found = self.results.prepare(self.config, self.overwrite, note=self._print)
        device = resolve_device(self.config.get("engine.device"))
        for line in filter(None, (configure_threads(device), busy_warning() if device.type == "cpu" else None)):
            self._print(line)
        if found:
            self._print(f"resuming {self.results.path}: {found} finished request(s) kept")
        done = {r["key"]: r for r in self.results.load_records()}
        self.models = Models(self.config, self.log)
        prompts = self._drop_oversized(prompts)
        jobs = build_schedule(self.config, prompts)
        total = sum(len(j.prompt.turns) for j in jobs) * len(specs)
        todo = total - sum(1 for j in jobs for t in range(len(j.prompt.turns)) for s in specs
                           if R.record_key(s.label, j.prompt_id, t + 1, j.repeat) in done)
        monitor = None
        session = None
        interrupted = False
        try:
            if todo:
                backends = {s.label: make_backend(s, self.models, self.config) for s in specs}
                for backend in backends.values():
                    backend.prepare()
                self._warmup(specs, backends, prompts[0])
                monitor = Monitor(self.models.device, self.config.get("run.monitor_interval_s"),
                                  self.config.get("run.monitor"), cuda_indices=self.models.cuda_indices()).start()
                if batch_size(self.config) > 1:
                    self._loop_batched(specs, backends, jobs, done, monitor, total, todo)
                else:
                    self._loop(specs, backends, jobs, done, monitor, total, todo)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if monitor is not None:
                session = monitor.stop()
                monitor.close()
        metrics = self.finalize(session, specs)
        if interrupted:
            raise KeyboardInterrupt
        return metrics

    def _drop_oversized(self, prompts: list[Prompt]) -> list[Prompt]:
        """Leave out prompts whose first turn plus ``generation.max_tokens`` exceeds the target's
        context, naming them, rather than failing mid-run on one long prompt."""
        limit = self.models.engine.context_limit
        cap = self.config.get("engine.max_batch_length")
        if cap is not None:
            # MAX_BATCH_LENGTH caps prompt + new tokens per row: longer prompts are left out,
            # named (never truncated: a cut prompt would be another request).
            limit = min(limit, cap) if limit else cap
        if not limit:
            return prompts
        budget = self.config.get("generation.max_tokens")
        tokenizer = self.models.target.tokenizer
        chat = self.config.get("workload.chat_template")
        kept, dropped = [], []
        for prompt in prompts:
            length = len(encode_turns(tokenizer, [{"role": "user", "content": prompt.turns[0]}], chat))
            (kept if length + budget <= limit else dropped).append((prompt, length))
        if dropped:
            names = ", ".join(f"{p.id} ({n} tokens)" for p, n in dropped[:5]) + (" ..." if len(dropped) > 5 else "")
            what = f"engine.max_batch_length {cap}" if cap is not None and limit == cap else f"the model's context of {limit}"
            self._print(f"left out {len(dropped)} prompt(s) that do not fit {what} tokens with {budget} new tokens: {names}")
        if not kept:
            raise UsageError(f"no prompt fits the model's context of {limit} tokens with {budget} new tokens; "
                             "lower generation.max_tokens or pick shorter prompts")
        return [p for p, _ in kept]

    def _warmup(self, specs, backends, prompt: Prompt) -> None:
        """The same warm-up for every method (first prompt, first turn), alternating; excluded."""
        n = self.config.get("run.warmup")
        if not n:
            return
        ids = encode_turns(self.models.target.tokenizer, [{"role": "user", "content": prompt.turns[0]}],
                           self.config.get("workload.chat_template"))
        size = batch_size(self.config)
        for i in range(n):
            for spec in specs:
                gen = generation_config(self.config, spec, self.config.get("generation.seed") + i)
                if size > 1:  # the batch shape the run uses (a static cache and its graphs are sized here)
                    backends[spec.label].generate_batch([ids] * size, gen)
                else:
                    backends[spec.label].generate(ids, gen)

    def _loop(self, specs, backends, jobs, done, monitor, total, todo) -> None:
        tokenizer = self.models.target.tokenizer
        device = self.models.device
        chat = self.config.get("workload.chat_template")
        poisson = self.config.get("load.mode") == "poisson"
        clock: dict = {}  # (method, repeat) -> virtual time the server becomes free (Poisson)
        progress = _progress(self.console if self.show_progress else None, total, total - todo)
        with progress:
            for job in jobs:
                history = {s.label: [] for s in specs}
                for turn_index, user_text in enumerate(job.prompt.turns):
                    turn = turn_index + 1
                    for spec in specs:
                        key = R.record_key(spec.label, job.prompt_id, turn, job.repeat)
                        messages = history[spec.label] + [{"role": "user", "content": user_text}]
                        record = done.get(key)
                        if record is None:
                            ids = encode_turns(tokenizer, messages, chat)
                            seed = request_seed(self.config.get("generation.seed"), job.prompt_id, turn, job.repeat)
                            try:
                                if any(h.get("role") == "skipped" for h in history[spec.label]):
                                    raise ContextOverflow("an earlier turn of this conversation was skipped")
                                record = self._measure(backends[spec.label], spec, ids, seed, monitor, device)
                            except ContextOverflow as error:
                                # Recorded, not fatal: a resume skips it too instead of failing again.
                                record = skipped_record(str(error), len(ids))
                            record.update(key=key, method=spec.label, backend=spec.backend, prompt_id=job.prompt_id,
                                          category=job.prompt.category, turn=turn, repeat=job.repeat, prompt=user_text)
                            if not record.get("skipped"):
                                self._queue(record, job, turn, clock, poisson)
                            record["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                            self.results.append(record)
                            done[key] = record
                            progress.advance(f"{spec.label} {job.prompt_id}#{turn}")
                        elif poisson and not record.get("skipped"):
                            end = record["arrival_s"] + record["queue_wait_s"] + record["service_e2e_s"]
                            clock[(spec.label, job.repeat)] = max(clock.get((spec.label, job.repeat), 0.0), end)
                        role = "skipped" if record.get("skipped") else "assistant"
                        history[spec.label] = messages + [{"role": role, "content": record["text"]}]

    def _loop_batched(self, specs, backends, jobs, done, monitor, total, todo) -> None:
        """Batches of ``engine.batch_size`` requests in schedule order (arrival order in Poisson
        mode), each decoded together by every method in turn; turn t of a batch's
        conversations runs after turn t - 1 of all of them. One record per request, as in the
        batch-1 loop, plus the batch's figures."""
        tokenizer = self.models.target.tokenizer
        chat = self.config.get("workload.chat_template")
        poisson = self.config.get("load.mode") == "poisson"
        size = batch_size(self.config)
        clock: dict = {}
        progress = _progress(self.console if self.show_progress else None, total, total - todo)
        with progress:
            for first in range(0, len(jobs), size):
                batch = jobs[first:first + size]
                history = {(s.label, i): [] for s in specs for i in range(len(batch))}
                for turn_index in range(max(len(j.prompt.turns) for j in batch)):
                    turn = turn_index + 1
                    rows = [i for i, j in enumerate(batch) if turn_index < len(j.prompt.turns)]
                    for spec in specs:
                        keys = {i: R.record_key(spec.label, batch[i].prompt_id, turn, batch[i].repeat) for i in rows}
                        todo_rows = [i for i in rows if keys[i] not in done]
                        messages = {i: history[(spec.label, i)] + [{"role": "user", "content": batch[i].prompt.turns[turn_index]}]
                                    for i in rows}
                        encoded = {i: encode_turns(tokenizer, messages[i], chat) for i in todo_rows}
                        for i in list(todo_rows):
                            try:
                                if any(h.get("role") == "skipped" for h in history[(spec.label, i)]):
                                    raise ContextOverflow("an earlier turn of this conversation was skipped")
                                self.models.engine.check_fits(len(encoded[i]), self.config.get("generation.max_tokens"))
                            except ContextOverflow as error:
                                record = skipped_record(str(error), len(encoded[i]))
                                record.update(key=keys[i], method=spec.label, backend=spec.backend,
                                              prompt_id=batch[i].prompt_id, category=batch[i].prompt.category, turn=turn,
                                              repeat=batch[i].repeat, prompt=batch[i].prompt.turns[turn_index])
                                self.results.append(record)
                                done[keys[i]] = record
                                todo_rows.remove(i)
                                progress.advance(f"{spec.label} {batch[i].prompt_id}#{turn} (skipped)")
                        if todo_rows:
                            ids = [encoded[i] for i in todo_rows]
                            lead = batch[todo_rows[0]]
                            seed = request_seed(self.config.get("generation.seed"), lead.prompt_id, turn, lead.repeat)
                            records = self._measure_batch(backends[spec.label], spec, ids, seed, monitor)
                            arrivals = [batch[i].arrival_s if turn == 1 else None for i in todo_rows]
                            self._queue_batch(records, spec.label, lead.repeat, arrivals, clock, poisson)
                            batch_id = f"{spec.label}|{lead.prompt_id}|{turn}|{lead.repeat}"
                            for i, record in zip(todo_rows, records):
                                job = batch[i]
                                record.update(key=keys[i], method=spec.label, backend=spec.backend, prompt_id=job.prompt_id,
                                              category=job.prompt.category, turn=turn, repeat=job.repeat, batch_id=batch_id,
                                              prompt=job.prompt.turns[turn_index])
                                record["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                                self.results.append(record)
                                done[keys[i]] = record
                                progress.advance(f"{spec.label} {job.prompt_id}#{turn}")
                        for i in rows:
                            role = "skipped" if done[keys[i]].get("skipped") else "assistant"
                            history[(spec.label, i)] = messages[i] + [{"role": role, "content": done[keys[i]]["text"]}]

    def _measure_batch(self, backend, spec, ids: list[list[int]], seed, monitor) -> list[dict]:
        """Decode ``ids`` as one batch; one record per row (the batch's energy on every row,
        marked as the batch's: it is not any one request's)."""
        results, gen, energy, peak = self._timed(lambda gen: backend.generate_batch(ids, gen), spec, seed, monitor)
        records = []
        for result in results:
            record = self._record(result, spec, gen, seed, peak)
            record.setdefault("batch_size", len(ids))
            record.update(batch_energy_j=energy, energy_j=None)
            records.append(record)
        return records

    @staticmethod
    def _queue_batch(records, method: str, repeat: int, arrivals, clock: dict, poisson: bool) -> None:
        """Static batching on the single-server virtual clock: a batch starts when the server is
        free and its last request has arrived; each request waits from its own arrival."""
        if not poisson:
            for record in records:
                record.update(arrival_s=None, queue_wait_s=0.0)
            return
        slot = (method, repeat)
        free_at = clock.get(slot, 0.0)
        arrivals = [a if a is not None else free_at for a in arrivals]
        start = max([free_at, *arrivals])
        clock[slot] = start + max(r["batch_e2e_s"] if r.get("batch_e2e_s") is not None else r["service_e2e_s"] for r in records)
        for record, arrival in zip(records, arrivals):
            wait = start - arrival
            record.update(arrival_s=arrival, queue_wait_s=wait, e2e_s=record["service_e2e_s"] + wait,
                          ttft_s=record["service_ttft_s"] + wait if record.get("service_ttft_s") is not None else None)

    def _measure(self, backend, spec, ids, seed, monitor, device) -> dict:
        result, gen, energy, peak = self._timed(lambda gen: backend.generate(ids, gen), spec, seed, monitor)
        record = self._record(result, spec, gen, seed, peak)
        record["energy_j"] = energy
        return record

    def _timed(self, run, spec, seed, monitor):
        """``run(generation_config)`` between two energy readings and a CUDA peak-memory reset;
        returns (its result, the config, joules or None, peak bytes or None)."""
        device = self.models.device
        gen = generation_config(self.config, spec, seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        energy_before = monitor.energy_j()
        result = run(gen)
        energy_after = monitor.energy_j()
        energy = energy_after - energy_before if energy_before is not None and energy_after is not None else None
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return result, gen, energy, peak

    @staticmethod
    def _record(result, spec, gen, seed, peak) -> dict:
        """One request's record: the engine's stats plus what the harness adds."""
        stats = dict(result.stats)
        record = {**stats}
        record["gamma"] = gen.gamma if spec.backend not in ("target", "hf_generate") else None
        record["seed"] = seed
        record["greedy"] = gen.sampling.greedy
        record["service_ttft_s"] = stats.get("ttft_s")
        record["service_e2e_s"] = stats.get("e2e_s")
        record["peak_mem_bytes"] = peak
        record["text"] = result.text
        record["token_ids"] = list(result.token_ids)
        return record

    @staticmethod
    def _queue(record, job: Job, turn: int, clock: dict, poisson: bool) -> None:
        """Queue wait and latency including it. Poisson mode simulates a FIFO single server on a
        virtual clock per method from the measured service times (so methods can still alternate
        per prompt); the turns of a conversation are served back to back."""
        service_e2e = record["service_e2e_s"]
        if not poisson:
            record.update(arrival_s=None, queue_wait_s=0.0)
            return
        slot = (record["method"], job.repeat)
        free_at = clock.get(slot, 0.0)
        arrival = job.arrival_s if turn == 1 else free_at
        start = max(arrival, free_at)
        wait = start - arrival
        clock[slot] = start + service_e2e
        record.update(arrival_s=arrival, queue_wait_s=wait, e2e_s=service_e2e + wait,
                      ttft_s=record["service_ttft_s"] + wait if record.get("service_ttft_s") is not None else None)

    # ---------------------------------------------------------------------------------------
    def finalize(self, session: dict | None, specs=None) -> dict:
        """Aggregate responses.jsonl into metrics.json, benchmark_results*.json and plots."""
        labels = [s.label for s in specs] if specs else self.config.methods
        device = self.models.device if hasattr(self, "models") else torch.device("cpu")
        dtype = self.models._target.dtype if getattr(self, "models", None) and self.models._target else self.config.get("engine.dtype")
        ignored = {}
        for spec in specs or []:
            backend = make_backend(spec, self.models, self.config)
            if backend.ignored_options(self.config):
                ignored[spec.label] = backend.ignored_options(self.config)
        previous = self.results.read(R.METRICS) or {}
        sessions = list(previous.get("sessions", []))
        if session is not None:
            sessions.append({"manifest": manifest(device, dtype), "monitor": session,
                             "placement": self.models.placement_record() if hasattr(self, "models") else None,
                             "workload_skipped": getattr(self, "workload_skipped", {})})
        return write_outputs(self.results, self.config.to_dict(), self.config.hash(), labels, sessions, ignored,
                             self.config.get("run.bootstrap"), self.config.get("load.mode"))


def write_outputs(results: R.ResultsDir, config: dict, config_hash: str, methods: list[str], sessions: list,
                  ignored: dict, resamples: int = 2000, load_mode: str = "fixed") -> dict:
    """Every derived file of a run, from its responses.jsonl alone (used by run and report)."""
    records = results.load_records()
    if is_server_records(records):  # serving engines (issue #12): one row per (method, rate)
        summary = server_summary(results.path, records, methods, resamples, config)
    else:
        summary = summarize(records, methods, "target", resamples)
    last = sessions[-1] if sessions else {}
    monitor = last.get("monitor")
    if monitor and monitor.get("kind") == "cpu":
        rss = (monitor.get("devices", {}).get("cpu") or {}).get("peak_rss_bytes")
        for figures in summary["methods"].values():
            if figures.get("peak_mem_bytes") is None:
                figures["peak_mem_bytes"] = rss
                figures["peak_mem_source"] = "process_peak_rss (whole run)"
    energy_reason = monitor.get("energy_reason") if monitor else "no monitor session recorded (monitor off or run interrupted)"
    for figures in summary["methods"].values():
        if figures.get("energy_j") is None:
            figures["energy_reason"] = energy_reason
    metrics = {
        "schema": "specdec.bench/1",
        "config_hash": config_hash,
        "config": config,
        "load_mode": load_mode,
        "manifest": last.get("manifest"),
        "sessions": sessions,
        "ignored_options": ignored,
        "workload_skipped": last.get("workload_skipped") or {},
        "summary": summary,
        "records": [{k: v for k, v in r.items() if k != "token_ids"} for r in records],
    }
    results.write(R.METRICS, metrics)
    compact = {label: {k: v for k, v in s.items()} for label, s in summary["methods"].items()}
    results.write(R.RESULTS, {"schema": "specdec.bench/1", "config": config, "manifest": last.get("manifest"),
                              "baseline": summary["baseline"], "methods": compact, "ignored_options": ignored,
                              "monitor": monitor})
    results.write(R.RESULTS_SPECULATIVE, {
        "methods": {k: v for k, v in compact.items() if k != "target"},
        "records": [r for r in metrics["records"] if r["method"] != "target"]})
    results.write(R.RESULTS_TARGET, {
        "method": compact.get("target"), "records": [r for r in metrics["records"] if r["method"] == "target"]})
    results.write(R.RESULTS_GPU, {"monitor": monitor, "sessions": [s.get("monitor") for s in sessions],
                                  "device_name": (last.get("manifest") or {}).get("device_name")})
    from .plots import write_plots

    metrics["plots"] = write_plots(results.path, summary, records)
    return metrics


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, label: str) -> None:
        pass


class _RichProgress(_NullProgress):
    def __init__(self, console, total, completed) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]bench[/bold]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                                 console=console, transient=False)
        self.task = self.progress.add_task("", total=total, completed=completed)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def advance(self, label: str) -> None:
        self.progress.update(self.task, advance=1, description=label)


def _progress(console, total, completed):
    return _RichProgress(console, total, completed) if console is not None else _NullProgress()
