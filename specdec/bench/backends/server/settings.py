"""What one method of a server run asks of a serving engine: the config read once into plain,
immutable values that the launchers, the vLLM offline mapping and the client share.

A method is ``target`` (the engine without speculation), ``speculative`` (a draft model, or
n-gram lookup with ``speculative.method: ngram``) or ``ngram``; ``name:gamma=K`` overrides the
number of draft tokens. ``engine.spec_type`` names the engine's own drafting method verbatim
(vLLM ``speculative_config.method``, SGLang ``--speculative-algorithm``, llama.cpp
``--spec-type``) for what the generic names do not cover (EAGLE-3, MTP, other n-gram kinds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from specdec.errors import UsageError

ENGINES = ("vllm", "sglang", "llama.cpp")
SERVER_METHODS = ("target", "speculative", "ngram")


@dataclass(frozen=True)
class Drafting:
    """How a speculative method drafts: ``kind`` is "model" (a draft model) or "ngram"."""

    kind: str
    gamma: int
    draft_model: str | None = None
    ngram_max: int = 3
    ngram_min: int = 1
    spec_type: str | None = None  # the engine's own name for the method, passed verbatim


@dataclass(frozen=True)
class ServerSettings:
    """Everything needed to start one engine for one method (host and port included)."""

    engine: str
    model: str
    host: str
    port: int
    drafting: Drafting | None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    served_model_name: str | None = None
    metrics: bool = True
    seed: int | None = None
    executable: str | None = None
    extra_args: tuple[str, ...] = ()


def local_path(value: str | None) -> str | None:
    """``value`` with ``~`` expanded when that names an existing file or folder (else as given:
    a hub id stays a hub id)."""
    if value is None:
        return None
    expanded = os.path.expanduser(value)
    return expanded if os.path.exists(expanded) else value


def drafting_for(config, backend: str, gamma: int | None) -> Drafting | None:
    """The drafting of method ``backend`` (``target`` -> None) under ``config``."""
    if backend == "target":
        return None
    kind = "ngram" if backend == "ngram" or config.get("speculative.method") == "ngram" else "model"
    return Drafting(
        kind=kind,
        gamma=gamma or config.get("speculative.num_speculative_tokens"),
        draft_model=local_path(config.get("speculative.draft_model")) if kind == "model" else None,
        ngram_max=config.get("speculative.ngram_max"),
        ngram_min=config.get("speculative.ngram_min"),
        spec_type=config.get("engine.spec_type"),
    )


def server_settings(config, backend: str, gamma: int | None, port: int) -> ServerSettings:
    """The settings of the engine that ``engine.launch`` starts for one method."""
    engine = config.get("engine.launch")
    if engine not in ENGINES:
        raise UsageError(f"engine.launch must be one of {', '.join(ENGINES)}, got {engine!r}")
    return ServerSettings(
        engine=engine,
        model=local_path(config.get("model")),
        host=config.get("engine.host"),
        port=port,
        drafting=drafting_for(config, backend, gamma),
        tensor_parallel_size=config.get("engine.tensor_parallel_size"),
        gpu_memory_utilization=config.get("engine.gpu_memory_utilization"),
        max_model_len=config.get("engine.max_model_len"),
        max_num_seqs=config.get("engine.max_num_seqs"),
        served_model_name=config.get("engine.served_model_name"),
        metrics=config.get("engine.metrics"),
        seed=config.get("generation.seed"),
        executable=config.get("engine.executable"),
        extra_args=tuple(config.get("engine.extra_args") or ()),
    )


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
