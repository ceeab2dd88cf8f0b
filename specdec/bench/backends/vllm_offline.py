"""``engine.backend: vllm``: vLLM's offline engine in this process, the S3 study's way of
running batches. The whole workload goes to ``vllm.LLM.generate`` (or ``.chat``) in one call
per turn; acceptance comes from ``LLM.get_metrics()``.

The mapping from our config to vLLM's arguments (:func:`llm_kwargs`, :func:`sampling_kwargs`)
needs no vLLM and is unit-tested; :func:`import_vllm` is the one place that imports it.
"""

from __future__ import annotations

import gc
import os
import time

from specdec.bench import results as R
from specdec.bench.backends.served import BatchContext, ServedBackend
from specdec.bench.backends.server.records import make_record, seed_for
from specdec.bench.backends.server.server_metrics import Scrape, counters_from_vllm_metrics
from specdec.bench.workloads import Job

from specdec.errors import UsageError
from specdec.bench.backends.server.launchers import vllm_speculative_config
from specdec.bench.backends.server.openai_client import StreamResult
from specdec.bench.backends.server.settings import drafting_for, local_path, vllm_cpu_env, vllm_env_dir

INSTALL_HINT = ("engine.backend vllm needs vLLM in this Python, which does not have it: run bash scripts/setup-vllm.sh "
                f"and then {vllm_env_dir() / 'bin' / 'python'} -m specdec bench ... (its environment has specdec too); "
                "or use engine.backend openai with engine.launch vllm")


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return vllm


def llm_kwargs(config, spec) -> dict:
    """``vllm.LLM(**kwargs)`` for one method: the target, its parallelism and memory settings,
    and ``speculative_config`` (absent for ``target``)."""
    kwargs = {"model": local_path(config.get("model")),
              "tensor_parallel_size": config.get("engine.tensor_parallel_size"),
              "seed": config.get("generation.seed")}
    optional = {"gpu_memory_utilization": "engine.gpu_memory_utilization", "max_model_len": "engine.max_model_len",
                "max_num_seqs": "engine.max_num_seqs"}
    for name, key in optional.items():
        if config.get(key) is not None:
            kwargs[name] = config.get(key)
    if config.get("engine.dtype") not in (None, "auto"):
        kwargs["dtype"] = config.get("engine.dtype")
    if config.get("engine.enforce_eager"):
        kwargs["enforce_eager"] = True
    kwargs["disable_log_stats"] = False  # else get_metrics() asserts and RequestOutput.metrics is None
    speculative = vllm_speculative_config(drafting_for(config, spec.backend, spec.gamma))
    if speculative is not None:
        kwargs["speculative_config"] = speculative
    return kwargs


def sampling_kwargs(config, seed: int | None) -> dict:
    """``vllm.SamplingParams(**kwargs)`` of one request (the same budget and sampling as every
    other backend; top_k 0 is left out: vLLM's default is "all tokens")."""
    kwargs = {"max_tokens": config.get("generation.max_tokens"), "temperature": config.get("generation.temperature"),
              "top_p": config.get("generation.top_p"), "seed": seed, "ignore_eos": config.get("generation.ignore_eos")}
    if config.get("generation.top_k"):
        kwargs["top_k"] = config.get("generation.top_k")
    if config.get("generation.stop_strings"):
        kwargs["stop"] = list(config.get("generation.stop_strings"))
    return kwargs


def request_times(output, batch_wall_s: float) -> tuple[float | None, float]:
    """(ttft_s, e2e_s) of one request from vLLM's per-request metrics: V1's ``RequestStateStats``
    (``first_token_latency`` from arrival; ``first_token_ts`` / ``last_token_ts`` on the engine's
    monotonic clock, so e2e = latency + their difference), or the older ``RequestMetrics``
    (``arrival_time`` / ``first_token_time`` / ``last_token_time`` on one clock); otherwise no
    TTFT and the batch's wall time (every request was submitted at once). All requests of one
    ``generate`` arrive together, so TTFT includes waiting behind the batch's prefills."""
    metrics = getattr(output, "metrics", None)
    latency = getattr(metrics, "first_token_latency", None)
    if isinstance(latency, (int, float)) and latency > 0:  # 0.0 when stat logging is off
        first, last = getattr(metrics, "first_token_ts", None), getattr(metrics, "last_token_ts", None)
        decode = last - first if isinstance(first, (int, float)) and isinstance(last, (int, float)) else 0.0
        return float(latency), float(latency) + max(0.0, decode)
    arrival = getattr(metrics, "arrival_time", None)
    first = getattr(metrics, "first_token_time", None)
    last = getattr(metrics, "last_token_time", None) or getattr(metrics, "finished_time", None)
    if arrival is not None and first is not None and last is not None:
        return first - arrival, last - arrival
    return None, batch_wall_s


def set_cpu_env(config, note=print) -> dict:
    """Put what vLLM's CPU build needs (:func:`vllm_cpu_env`) into this process's environment
    before ``vllm.LLM`` starts its engine processes (they inherit it); returns what was set.
    LD_PRELOAD cannot take effect in a running process: without it, one note says so."""
    env, _ = vllm_cpu_env(config, preload=False)
    os.environ.update(env)
    if env and not os.environ.get("LD_PRELOAD"):
        note("vllm.LLM runs without Intel OpenMP / tcmalloc preloaded (LD_PRELOAD cannot be set inside a running "
             "process): start it as `env $(cat " + str(vllm_env_dir() / "specdec-vllm.env") + ") python -m specdec "
             "bench ...` for vLLM's CPU speed")
    return env


def llm_dtype(llm) -> str | None:
    """The dtype ``llm`` runs (``llm_engine.model_config.dtype``), e.g. "float32"."""
    try:
        dtype = llm.llm_engine.model_config.dtype
    except AttributeError:
        return None
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def generate(llm, vllm, config, conversations: list[list[dict]], seeds: list[int]) -> list[StreamResult]:
    """One call for all ``conversations`` (each ending with a user turn)."""
    from specdec.bench.backends.server.settings import api_of

    params = [vllm.SamplingParams(**sampling_kwargs(config, seed)) for seed in seeds]
    start = time.perf_counter()
    if api_of(config) == "chat":
        outputs = llm.chat(conversations, sampling_params=params, use_tqdm=False)
    else:
        prompts = ["\n\n".join(m["content"] for m in messages) for messages in conversations]
        outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
    wall = time.perf_counter() - start
    results = []
    for output in outputs:
        completion = output.outputs[0]
        ttft, e2e = request_times(output, wall)
        results.append(StreamResult(ok=True, text=completion.text, ttft_s=ttft, e2e_s=e2e,
                                    completion_tokens=len(completion.token_ids),
                                    prompt_tokens=len(output.prompt_token_ids or []),
                                    finish_reason=completion.finish_reason))
    return results


class VllmOfflineBackend(ServedBackend):
    """``vllm.LLM`` in this process for one method: the whole batch in one ``generate`` (or
    ``chat``) call per turn, the way the S3 study runs batches; acceptance from
    ``LLM.get_metrics()``. Arrival times do not apply (every request is submitted at once)."""

    backend = "vllm"
    serving = "vllm offline"
    log_path = None

    def __init__(self, spec, run) -> None:
        super().__init__(spec, run)
        self.vllm = import_vllm()
        self.llm = None

    def _start(self) -> None:
        kwargs = llm_kwargs(self.config, self.spec)
        set_cpu_env(self.config, self._note)
        self.log(f"loading vllm.LLM for {self.spec.label}")
        self.llm = self.vllm.LLM(**kwargs)
        self.engine_info["dtype"] = llm_dtype(self.llm)
        self.log(f"vllm.LLM for {self.spec.label} runs dtype {self.engine_info['dtype'] or 'unknown'}")

    def _stop(self) -> None:
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
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
        for i in range(count):
            try:
                generate(self.llm, self.vllm, self.config, [[{"role": "user", "content": prompt.turns[0]}]],
                         [self.config.get("generation.seed") + i])
            except Exception as error:  # the measured requests will say more; this one is excluded anyway
                self.log(f"warm-up request failed: {type(error).__name__}: {error}")

    def _send(self, jobs: list[Job], ctx: BatchContext) -> None:
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
