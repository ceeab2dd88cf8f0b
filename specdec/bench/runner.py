"""The benchmark loop: load the workload, plan the batches, and give each to its method's
backend, appending one record per finished request.

Methods whose engines run in this process alternate request by request (A B A B); a method
that runs on an engine of its own (a server, ``vllm.LLM``) runs its batches as one block
(:mod:`specdec.bench.backends.base`). The runner does not know which backend it drives.

From Python::

    from specdec.bench import BenchmarkRunner
    summary = BenchmarkRunner("bench.yaml", output_dir="runs/a", **{"generation.max_tokens": 64}).run()

The same precedence as the command line: defaults < config file < environment variables <
keyword overrides (dotted keys).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

import torch

from specdec.bench import results as R
from specdec.bench.backends import (Batch, Models, RunContext, backend_class, batch_size, check_methods,
                                    make_backend)
from specdec.bench.backends.server.load import build_jobs, rates_of, row_label
from specdec.bench.backends.server.summary import is_server_run as is_server_records, server_summary
from specdec.bench.config import BenchConfig, load_config
from specdec.bench.manifest import manifest
from specdec.bench.metrics import summarize
from specdec.bench.monitor import Monitor
from specdec.bench.workloads import SKIPPED as WORKLOAD_SKIPPED
from specdec.bench.workloads import Prompt, build_schedule, load_workload, request_seed  # noqa: F401 (request_seed: old import path)
from specdec.errors import SpecdecError, UsageError
from specdec.models.placement import plan_placement
from specdec.runners.devices import resolve_device


def plan_batches(config, specs, prompts: list[Prompt], interleave: bool, done: dict) -> list[Batch]:
    """Every batch of the run in the order it runs.

    interleave: methods alternate group by group (``engine.batch_size`` jobs, one group per
        method in turn); otherwise each method is one block of batches, one per repeat and
        rate (rates ascending), the way an engine started for one method is measured.
    """
    if interleave:
        jobs = build_schedule(config, prompts)
        size = batch_size(config)
        return [Batch(spec, None, jobs[first].repeat, spec.label, jobs[first:first + size], done)
                for first in range(0, len(jobs), size) for spec in specs]
    offline = config.get("engine.backend") == "vllm"  # vllm.LLM takes the whole workload at once
    mode = "fixed" if offline else config.get("load.mode")
    duration = config.get("load.duration")
    count = config.get("workload.num_prompts") if duration is None else None
    rates = [None] if offline else sorted(rates_of(config), key=lambda r: r or 0.0)
    batches = []
    for spec in specs:
        for repeat in range(config.get("run.repeats")):
            for rate in rates:
                jobs = build_jobs(prompts, mode, rate, repeat, count, duration, config.get("workload.seed"))
                batches.append(Batch(spec, rate, repeat, row_label(spec.label, rate), jobs, done))
    return batches


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

    def _line(self, message: str) -> None:
        """A line for the user, printed as it is (no markup): the console, or stderr without one."""
        if self.console is not None:
            self.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

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

        On Ctrl-C or an error (a server that died), the finished requests are kept, the
        aggregates are written, and the exception propagates; running again resumes.
        """
        # One run per folder at a time: a second is refused, naming the process that holds it.
        self._lock = self.results.lock()
        try:
            return self._run(*self.check())
        finally:
            self._lock.release()

    def _run(self, specs, prompts) -> dict:
        config = self.config
        found = self.results.prepare(config, self.overwrite, note=self._print)
        if found:
            self._print(f"resuming {self.results.path}: {found} finished request(s) kept")
        # A request that failed because its engine stopped (a server that died) is not done:
        # a resumed run sends it again.
        done = {r["key"]: r for r in self.results.load_records() if not r.get("engine_stopped")}
        self.models = Models(config, self.log)  # loads on first use (never, for a server run)
        run = RunContext(config, self.models, self.results.path, log=self._line)
        backends = {s.label: make_backend(s, run) for s in specs}
        in_process = all(b.in_process for b in backends.values())
        for backend in backends.values():
            prompts = backend.admit(prompts)
        plan = plan_batches(config, specs, prompts, in_process, done)
        pending = [b for b in plan if b.missing()]
        total = sum(len(b.keys()) for b in plan)
        todo = sum(b.missing() for b in pending)
        monitor, session, failure = None, None, None
        with ExitStack() as opened:
            try:
                if todo:
                    warmup = lambda backend: backend.warmup(prompts[0], config.get("run.warmup"))  # noqa: E731
                    # In-process engines open (load, warm up) before the monitor starts, so that
                    # it measures the devices they sit on and none of their loading.
                    for backend in {id(backends[b.spec.label]): backends[b.spec.label] for b in pending}.values():
                        if backend.in_process:
                            opened.enter_context(backend)
                            warmup(backend)
                    monitor = Monitor(self.models.device, config.get("run.monitor_interval_s"), config.get("run.monitor"),
                                      cuda_indices=self.models.cuda_indices()).start()
                    run.monitor = monitor
                    self._run_batches(pending, backends, done, warmup, total, todo)
            except (KeyboardInterrupt, SpecdecError) as error:
                failure = error
            finally:
                if monitor is not None:
                    session = monitor.stop()
                    monitor.close()
        if session is not None and not in_process:
            session = _client_side_only(session)
        metrics = self.finalize(session, specs)
        if failure is not None:
            raise failure
        return metrics

    def _run_batches(self, pending: list[Batch], backends: dict, done: dict, warmup, total: int, todo: int) -> None:
        """Each pending batch on its method's backend; a backend not open yet opens (and warms
        up) before its first batch and closes after its last."""
        last = {b.spec.label: i for i, b in enumerate(pending)}
        progress = _progress(self.console if self.show_progress else None, total, total - todo)
        with progress, ExitStack() as stack:
            opened: dict[str, ExitStack] = {}

            def on_record(record: dict) -> None:
                self.results.append(record)
                done[record["key"]] = record  # the batches' shared record of what is done
                label = f"{record['method']} {record['prompt_id']}#{record['turn']}"
                progress.advance(label + (" (skipped)" if record.get("skipped") else ""))

            for i, batch in enumerate(pending):
                label = batch.spec.label
                backend = backends[label]
                if label not in opened and not backend.in_process:
                    opened[label] = stack.enter_context(ExitStack())
                    opened[label].enter_context(backend)
                    warmup(backend)
                backend.run_batch(batch, on_record)
                if last[label] == i and label in opened:
                    opened.pop(label).close()  # the next method's engine may need the memory

    # ---------------------------------------------------------------------------------------
    def finalize(self, session: dict | None, specs=None) -> dict:
        """Aggregate responses.jsonl into metrics.json, benchmark_results*.json and plots."""
        labels = [s.label for s in specs] if specs else self.config.methods
        device = self.models.device if hasattr(self, "models") else torch.device("cpu")
        dtype = self.models._target.dtype if getattr(self, "models", None) and self.models._target else self.config.get("engine.dtype")
        ignored = {}
        for spec in specs or []:
            options = backend_class(spec, self.config).ignored_options(spec, self.config)
            if options:
                ignored[spec.label] = options
        previous = self.results.read(R.METRICS) or {}
        sessions = list(previous.get("sessions", []))
        if session is not None:
            sessions.append({"manifest": manifest(device, dtype), "monitor": session,
                             "placement": self.models.placement_record() if hasattr(self, "models") else None,
                             "workload_skipped": getattr(self, "workload_skipped", {})})
        return write_outputs(self.results, self.config.to_dict(), self.config.hash(), labels, sessions, ignored,
                             self.config.get("run.bootstrap"), self.config.get("load.mode"))


def _client_side_only(session: dict) -> dict:
    """The monitor measures this process; an engine in another process is not ours to report."""
    if session.get("kind") == "cpu":
        for device in (session.get("devices") or {}).values():
            if isinstance(device, dict) and "peak_rss_bytes" in device:
                device["peak_rss_bytes"] = None
        session["note"] = "server run: CPU figures are the client's; the server's memory is not measured"
    return session


def write_outputs(results: R.ResultsDir, config: dict, config_hash: str, methods: list[str], sessions: list,
                  ignored: dict, resamples: int = 2000, load_mode: str = "fixed") -> dict:
    """Every derived file of a run, from its responses.jsonl alone (used by run and report)."""
    records = results.load_records()
    if is_server_records(records):  # serving engines (issue #12): one row per (method, rate)
        summary = server_summary(results.path, records, methods, resamples, config)
    else:
        # The baseline is specdec's autoregressive run; a run of transformers' methods alone
        # pairs them with transformers' own plain generate.
        ran = {r.get("method") for r in records}
        baseline = "target" if "target" in ran or "hf_generate" not in ran else "hf_generate"
        summary = summarize(records, methods, baseline, resamples)
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
    from specdec.bench.plots import write_plots

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
