"""The per-request records of server runs: the same shape as the native backends' (one line of
responses.jsonl each), with the open-loop and server fields added.

Times: ``service_ttft_s`` / ``service_e2e_s`` run from the moment the request was sent;
``queue_wait_s`` is the time it waited on the client for a slot under ``load.max_concurrency``;
``ttft_s`` / ``e2e_s`` include that wait (latency from arrival, as the native Poisson mode
reports it). ``arrival_s`` is seconds after the batch started (None when requests go one after
another). A failed request has ``ok: false`` and a one-line ``error``, and no latency figures.
"""

from __future__ import annotations

from datetime import datetime, timezone

from specdec.bench import results as R
from specdec.bench.workloads import request_seed
from specdec.bench.backends.server.openai_client import Sampling, StreamResult


def sampling_for(config, seed: int | None) -> Sampling:
    return Sampling(
        max_tokens=config.get("generation.max_tokens"),
        temperature=config.get("generation.temperature"),
        top_p=config.get("generation.top_p"),
        top_k=config.get("generation.top_k"),
        seed=seed,
        ignore_eos=config.get("generation.ignore_eos"),
        stop=tuple(config.get("generation.stop_strings") or ()),
    )


def seed_for(config, prompt_id: str, turn: int, repeat: int) -> int:
    """The seed of one (prompt, turn, repeat), the same the native backends use."""
    return request_seed(config.get("generation.seed"), prompt_id, turn, repeat)


def make_record(result: StreamResult, *, row: str, spec, serving: str, backend: str, job, turn: int,
                seed: int, greedy: bool, gamma: int | None, waited_s: float, arrival_s: float | None,
                load_mode: str, rate: float | None) -> dict:
    """The record of one request (``row``: the result row's label, ``method@rate``)."""
    ok = result.ok
    tokens = result.completion_tokens if ok else None
    record = {
        "key": R.record_key(row, job.prompt_id, turn, job.repeat),
        "method": row,
        "method_base": spec.label,
        "backend": backend,
        "serving": serving,
        "prompt_id": job.prompt_id,
        "category": job.prompt.category,
        "turn": turn,
        "repeat": job.repeat,
        "load_mode": load_mode,
        "load_rate": rate,
        "ok": ok,
        "error": result.error,
        "new_tokens": tokens,
        "prompt_tokens": result.prompt_tokens if ok else None,
        "service_ttft_s": result.ttft_s if ok else None,
        "service_e2e_s": result.e2e_s if ok else None,
        "queue_wait_s": waited_s,
        "arrival_s": arrival_s,
        "ttft_s": result.ttft_s + waited_s if ok and result.ttft_s is not None else None,
        "e2e_s": result.e2e_s + waited_s if ok else None,
        "tpot_s": result.tpot_s if ok else None,
        "itl_s": [round(x, 6) for x in result.itl_s] if ok else [],
        "tokens_per_s": tokens / result.e2e_s if ok and tokens and result.e2e_s > 0 else None,
        "failed_after_s": None if ok else result.e2e_s,
        "gamma": gamma,
        "seed": seed,
        "greedy": greedy,
        "stop_reason": result.finish_reason,
        "usage_missing": ok and tokens is None,
        "energy_j": None,
        "peak_mem_bytes": None,
        "text": result.text,
        **result.server,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }
    return record


def usable(record: dict) -> bool:
    """A record the latency and throughput figures count: it finished and the server said how
    many tokens it generated."""
    return record.get("ok", True) and record.get("new_tokens") is not None and record.get("service_e2e_s") is not None
