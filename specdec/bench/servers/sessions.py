"""One serving engine for one method, and how a batch of requests runs on it.

:class:`OpenAISession` talks to an OpenAI-compatible server: the one ``engine.launch`` starts
for this method (stopped on the way out), or the one at ``engine.base_url``.
:class:`VllmOfflineSession` runs ``vllm.LLM`` in this process (``engine.backend: vllm``).
Both read the engine's speculation counters (``counters()``) and run a batch of jobs
(``run_batch``), handing each finished request to a callback as a record.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path

from ...errors import UsageError
from .launchers import ServerError, ServerProcess, command_line, free_port
from .load import Job, drive
from .openai_client import StreamResult, first_model, request_body, stream_request
from .records import make_record, sampling_for, seed_for
from .server_metrics import Scrape, counters_from_vllm_metrics, scrape
from .settings import drafting_for, server_settings


def api_of(config) -> str:
    """"chat" or "completions": ``engine.api``, or chat exactly when the workload asks for the
    chat template."""
    api = config.get("engine.api")
    if api == "auto":
        return "chat" if config.get("workload.chat_template") else "completions"
    return api


def auth_headers(config) -> dict:
    """``Authorization: Bearer ...`` from the environment variable ``engine.api_key_env`` names."""
    name = config.get("engine.api_key_env")
    if not name:
        return {}
    key = os.environ.get(name)
    if not key:
        raise UsageError(f"engine.api_key_env names {name}, but that environment variable is not set")
    return {"Authorization": f"Bearer {key}"}


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


class OpenAISession:
    """A context manager: the server of one method, launched or already running."""

    backend = "openai"

    def __init__(self, config, spec, log_dir: Path, log=print) -> None:
        self.config = config
        self.spec = spec
        self.log_dir = Path(log_dir)
        self.log = log
        self.process: ServerProcess | None = None
        self.engine = config.get("engine.launch")
        self.headers = auth_headers(config)
        self.api = api_of(config)
        self.base_url = config.get("engine.base_url")
        self.model_name = config.get("engine.served_model_name")
        self.timeout_s = config.get("engine.request_timeout_s")

    @property
    def serving(self) -> str:
        return self.engine or "openai"

    def __enter__(self) -> "OpenAISession":
        try:
            self._start()
        except BaseException:  # Ctrl-C or an error after the server started: stop it
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        if self.engine:
            port = self.config.get("engine.port") or free_port(self.config.get("engine.host"))
            settings = server_settings(self.config, self.spec.backend, self.spec.gamma, port)
            argv = command_line(settings)
            log_path = self.log_dir / f"{self.spec.label.replace(':', '_').replace('=', '')}.log"
            self.log(f"starting {self.engine} for {self.spec.label} (log: {log_path})")
            self.process = ServerProcess(self.engine, argv, settings.host, port, log_path,
                                         self.config.get("engine.startup_timeout_s")).__enter__()
            self.base_url = self.process.base_url
            if not self.model_name and self.engine in ("vllm", "sglang"):
                self.model_name = settings.model  # what they serve under without --served-model-name
        if not self.model_name:
            self.model_name = first_model(self.base_url, self.headers) or self.config.get("model")

    def __exit__(self, *exc) -> bool:
        if self.process is not None:
            self.process.stop()
        return False

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path if self.process else None

    def check_alive(self) -> None:
        if self.process is not None and not self.process.running:
            raise ServerError(f"{self.engine} stopped during the run (exit code {self.process.process.returncode}); "
                              f"log: {self.process.log_path}")

    def counters(self) -> Scrape:
        if not self.config.get("engine.metrics"):
            return Scrape(None, "engine.metrics is off")
        return scrape(self.base_url, self.engine, self.headers)

    # ---------------------------------------------------------------------------------------
    def warmup(self, prompt, count: int) -> None:
        """``count`` requests of the prompt's first turn, one after another (excluded)."""
        if not count:
            return

        async def go():
            import httpx

            async with httpx.AsyncClient(timeout=None) as client:
                for i in range(count):
                    path, body = request_body(self.api, self.model_name, [{"role": "user", "content": prompt.turns[0]}],
                                              sampling_for(self.config, self.config.get("generation.seed") + i))
                    result = await stream_request(client, self.base_url, path, body, self.headers, self.timeout_s)
                    if not result.ok:
                        self.log(f"warm-up request failed: {result.error}")

        asyncio.run(go())

    def run_batch(self, jobs: list[Job], ctx: BatchContext) -> None:
        """Send ``jobs`` at their arrival times (open loop); every finished turn goes to
        ``ctx.on_record``. Turns already in ``ctx.done`` (a resumed run) are not sent again."""
        asyncio.run(self._run(jobs, ctx))

    async def _run(self, jobs: list[Job], ctx: BatchContext) -> None:
        import httpx

        # No pool limit of our own: the open loop, not the client, decides what is in flight.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=None, limits=limits) as client:
            start = time.perf_counter()

            async def serve(job: Job, arrived: float | None, waited: float) -> None:
                await self._conversation(client, job, ctx, start, arrived, waited)

            await drive(jobs, serve, self.config.get("load.max_concurrency"))

    async def _conversation(self, client, job: Job, ctx: BatchContext, start: float, arrived, waited) -> None:
        from .. import results as R

        history: list[dict] = []
        failed = None
        for index, user_text in enumerate(job.prompt.turns):
            turn = index + 1
            messages = history + [{"role": "user", "content": user_text}]
            earlier = ctx.done.get(R.record_key(ctx.row, job.prompt_id, turn, job.repeat))
            if earlier is not None:  # a resumed run: this turn is recorded (a failure is final too)
                if earlier.get("ok", True):
                    history = messages + [{"role": "assistant", "content": earlier["text"]}]
                else:
                    failed = earlier.get("error") or "failed"
                continue
            seed = seed_for(self.config, job.prompt_id, turn, job.repeat)
            sent = time.perf_counter()
            if failed is not None:
                result = StreamResult(ok=False, error=f"not sent: turn {turn - 1} of this conversation failed")
            else:
                path, body = request_body(self.api, self.model_name, messages, sampling_for(self.config, seed))
                result = await stream_request(client, self.base_url, path, body, self.headers, self.timeout_s)
            turn_arrival = arrived if turn == 1 else (sent if arrived is not None else None)
            record = make_record(result, row=ctx.row, spec=ctx.spec, serving=self.serving, backend=self.backend, job=job,
                                 turn=turn, seed=seed, greedy=ctx.greedy, gamma=ctx.gamma,
                                 waited_s=waited if turn == 1 else 0.0,
                                 arrival_s=None if turn_arrival is None else turn_arrival - start,
                                 load_mode=ctx.mode, rate=ctx.rate)
            ctx.on_record(record)
            if not result.ok:
                failed = failed or result.error
                continue
            history = messages + [{"role": "assistant", "content": result.text}]


class VllmOfflineSession:
    """``vllm.LLM`` in this process for one method: the whole batch in one ``generate`` (or
    ``chat``) call per turn, the way the S3 study runs batches; acceptance from
    ``LLM.get_metrics()``. Arrival times do not apply (every request is submitted at once)."""

    backend = "vllm"
    serving = "vllm offline"
    log_path = None

    def __init__(self, config, spec, log_dir: Path, log=print) -> None:
        from .vllm_offline import import_vllm

        self.vllm = import_vllm()
        self.config = config
        self.spec = spec
        self.log = log
        self.llm = None

    def __enter__(self) -> "VllmOfflineSession":
        from .vllm_offline import llm_kwargs

        kwargs = llm_kwargs(self.config, self.spec)
        self.log(f"loading vllm.LLM for {self.spec.label}")
        self.llm = self.vllm.LLM(**kwargs)
        return self

    def __exit__(self, *exc) -> bool:
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        return False

    def check_alive(self) -> None:
        pass

    def counters(self) -> Scrape:
        try:
            counters = counters_from_vllm_metrics(self.llm.get_metrics())
        except Exception as error:  # older vLLM without get_metrics, or metrics switched off
            return Scrape(None, f"LLM.get_metrics() failed: {type(error).__name__}: {error}")
        if counters is None:
            return Scrape(None, "LLM.get_metrics() has no vllm:spec_decode_num_drafts (speculation off?)")
        return Scrape(counters)

    def warmup(self, prompt, count: int) -> None:
        from .vllm_offline import generate

        for i in range(count):
            generate(self.llm, self.vllm, self.config, [[{"role": "user", "content": prompt.turns[0]}]],
                     [self.config.get("generation.seed") + i])

    def run_batch(self, jobs: list[Job], ctx: BatchContext) -> None:
        from .. import results as R
        from .vllm_offline import generate

        histories = {id(job): [] for job in jobs}
        for index in range(max(len(job.prompt.turns) for job in jobs)):
            turn = index + 1
            batch = []
            for job in (j for j in jobs if len(j.prompt.turns) > index):
                user = {"role": "user", "content": job.prompt.turns[index]}
                earlier = ctx.done.get(R.record_key(ctx.row, job.prompt_id, turn, job.repeat))
                if earlier is None:
                    batch.append(job)
                else:  # a resumed run: answered (or failed) before
                    histories[id(job)] += [user, {"role": "assistant", "content": earlier.get("text", "")}]
            if not batch:
                continue
            conversations = [histories[id(job)] + [{"role": "user", "content": job.prompt.turns[index]}] for job in batch]
            seeds = [seed_for(self.config, job.prompt_id, turn, job.repeat) for job in batch]
            results = generate(self.llm, self.vllm, self.config, conversations, seeds)
            for job, messages, seed, result in zip(batch, conversations, seeds, results):
                ctx.on_record(make_record(result, row=ctx.row, spec=ctx.spec, serving=self.serving, backend=self.backend,
                                          job=job, turn=turn, seed=seed, greedy=ctx.greedy, gamma=ctx.gamma,
                                          waited_s=0.0, arrival_s=0.0, load_mode="burst", rate=None))
                histories[id(job)] = messages + [{"role": "assistant", "content": result.text}]
