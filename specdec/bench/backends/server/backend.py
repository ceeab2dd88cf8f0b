"""The OpenAI-compatible server backend (``engine.backend: openai``): the server that
``engine.launch`` starts for one method (stopped after the method's block), or the one at
``engine.base_url``; requests stream over HTTP under open-loop load, and speculation comes from
the server's ``/metrics`` counters."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from specdec.bench.backends.server.launchers import (ServerError, ServerProcess, command_line, dtype_from_log, free_port,
                                                     gguf_file_type)
from specdec.bench.backends.server.load import Job, drive
from specdec.bench.backends.server.openai_client import StreamResult, first_model, request_body, stream_request
from specdec.bench.backends.server.records import make_record, sampling_for, seed_for
from specdec.bench.backends.server.server_metrics import Scrape, scrape
from specdec.bench.backends.server.settings import api_of, auth_headers, server_settings, vllm_cpu_env
from specdec.bench.backends.served import BatchContext, ServedBackend


class OpenAIServerBackend(ServedBackend):
    """The server of one method, launched or already running."""

    backend = "openai"

    def __init__(self, spec, run) -> None:
        super().__init__(spec, run)
        config = run.config
        self.log_dir = Path(run.folder) / "server-logs"
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

    def _start(self) -> None:
        if self.engine:
            port = self.config.get("engine.port") or free_port(self.config.get("engine.host"))
            settings = server_settings(self.config, self.spec.backend, self.spec.gamma, port)
            argv = command_line(settings)
            log_path = self.log_dir / f"{self.spec.label.replace(':', '_').replace('=', '')}.log"
            self.log(f"starting {self.engine} for {self.spec.label} (log: {log_path})")
            if self.engine == "vllm":
                for note in vllm_cpu_env(self.config, preload=True)[1]:
                    self._note(note)
            self.process = ServerProcess(self.engine, argv, settings.host, port, log_path,
                                         self.config.get("engine.startup_timeout_s"), env=dict(settings.env)).__enter__()
            self.base_url = self.process.base_url
            self.engine_info["dtype"] = dtype_from_log(self.engine, log_path)
            if self.engine_info["dtype"] is None and self.engine == "llama.cpp":
                self.engine_info["dtype"] = gguf_file_type(settings.model)
            if settings.env:
                self.engine_info["env"] = dict(settings.env)
            self.log(f"{self.engine} for {self.spec.label} runs dtype {self.engine_info['dtype'] or 'unknown (not in its log)'}")
            if not self.model_name and self.engine in ("vllm", "sglang"):
                self.model_name = settings.model  # what they serve under without --served-model-name
        if not self.model_name:
            self.model_name = first_model(self.base_url, self.headers) or self.config.get("model")

    def _stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def log_path(self) -> Path | None:
        return self.process.log_path if self.process else None

    async def _engine_gone(self, result) -> bool:
        """Whether a failed request failed because the launched server ended: it has exited, or
        it exits within a second of a cut stream or refused connection (a killed server closes
        its sockets a moment before the OS reports it gone). An HTTP error from a live server
        is that request's own failure."""
        if self.process is None:
            return False
        if not self.process.running:
            return True
        if not (result.error or "").startswith(("the stream from", "cannot connect")):
            return False
        for _ in range(20):
            await asyncio.sleep(0.05)
            if not self.process.running:
                return True
        return False

    def check_alive(self) -> None:
        if self.process is not None and not self.process.running:
            raise ServerError(f"{self.engine} stopped during the run (exit code {self.process.process.returncode}); "
                              f"what was measured is kept, requests it left unanswered are recorded as failed: "
                              f"continue with specdec bench --resume --output-dir {self.run.folder} (log: "
                              f"{self.process.log_path})")

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

    def _send(self, jobs: list[Job], ctx: BatchContext) -> None:
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
        from specdec.bench import results as R

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
            if not result.ok and await self._engine_gone(result):
                record["engine_stopped"] = True  # not this request's fault: --resume sends it again
            ctx.on_record(record)
            if not result.ok:
                failed = failed or result.error
                continue
            history = messages + [{"role": "assistant", "content": result.text}]


