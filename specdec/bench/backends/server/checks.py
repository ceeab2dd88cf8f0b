"""Checks of a server run's config before anything starts, the options a server backend cannot
honour (reported, never silently dropped), and what ``--dry-run`` shows."""

from __future__ import annotations

import os

from specdec.errors import UsageError
from specdec.bench.backends.server.settings import SERVER_METHODS, drafting_for, local_path

SERVER_BACKENDS = ("openai", "vllm")

#: options of the native engine that no serving engine reads (reported when set explicitly)
NATIVE_ONLY = ("engine.device", "engine.prepack", "speculative.draft_vocab", "speculative.draft_schedule",
               "speculative.confidence_threshold", "speculative.ngram_match", "engine.enable_batch",
               "engine.batch_size", "engine.max_batch_length")
#: options of server runs that the native engine does not read
SERVER_ONLY = ("engine.launch", "engine.base_url", "engine.served_model_name", "engine.api_key_env",
               "engine.max_model_len", "engine.max_num_seqs", "engine.spec_type", "engine.extra_args",
               "engine.executable", "engine.port", "load.max_concurrency", "load.slo_ttft_ms", "load.slo_tpot_ms",
               "engine.enforce_eager", "engine.cpu_kvcache_gib", "engine.cpu_threads_bind")


def is_server_backend(config) -> bool:
    return config.get("engine.backend") in SERVER_BACKENDS


def _rates(config) -> list:
    rate = config.get("load.rate")
    return rate if isinstance(rate, list) else [rate]


def check_native_load(config) -> None:
    """The native backends serve one request at a time: no rate sweeps, no concurrent modes."""
    mode = config.get("load.mode")
    if mode in ("constant", "burst"):
        raise UsageError(f"load.mode {mode} sends requests concurrently: it needs a server backend "
                         "(engine.backend openai); the native backends take fixed or poisson")
    if mode == "poisson" and len(_rates(config)) > 1:
        raise UsageError("a list of rates (load.rate: [1, 2, 4]) sweeps the load of a server backend; "
                         "the native backends simulate one rate per run")


def check_server_config(config, specs) -> None:
    """UsageError naming the key and the fix for every server-run setting that cannot work."""
    backend = config.get("engine.backend")
    launch = config.get("engine.launch")
    base_url = config.get("engine.base_url")
    for spec in specs:
        if spec.backend not in SERVER_METHODS:
            raise UsageError(f"method {spec.label}: with engine.backend {backend} the methods are target, speculative "
                             f"and ngram (the engine without and with speculation); {spec.backend} runs transformers "
                             "in this process: run it in a config with engine.backend native")
    if backend == "vllm" and launch:
        raise UsageError("engine.launch starts a server, but engine.backend vllm runs vLLM in this process: use "
                         "engine.backend openai with engine.launch vllm, or drop engine.launch")
    if backend == "openai":
        if launch and base_url:
            raise UsageError("set engine.launch (start one server per method) or engine.base_url (use a running "
                             "server), not both")
        if not launch and not base_url:
            raise UsageError("engine.backend openai needs engine.base_url (a running server, e.g. "
                             "http://127.0.0.1:8000) or engine.launch (vllm, sglang or llama.cpp)")
        if base_url and not base_url.startswith(("http://", "https://")):
            raise UsageError(f"engine.base_url must start with http:// or https://, got {base_url!r}")
        if base_url and len(specs) != 1:
            raise UsageError(f"engine.base_url is one running server, so a run measures one method (got "
                             f"{', '.join(s.label for s in specs)}): use engine.launch to start one server per method, "
                             "or one config per server compared with specdec bench --configs")
    for spec in specs:
        drafting = drafting_for(config, spec.backend, spec.gamma)
        if drafting and drafting.kind == "model" and not drafting.draft_model and not drafting.spec_type and launch:
            raise UsageError(f"method {spec.label} needs a draft model: set speculative.draft_model (or "
                             "speculative.method: ngram, or engine.spec_type for a method without one, e.g. mtp)")
    if launch == "llama.cpp":
        _check_gguf("model", local_path(config.get("model")))
        for spec in specs:
            drafting = drafting_for(config, spec.backend, spec.gamma)
            if drafting and drafting.kind == "model":
                _check_gguf("speculative.draft_model", drafting.draft_model)
    if backend == "openai":
        for rate in _rates(config) if config.get("load.mode") in ("poisson", "constant") else []:
            if rate is None or rate <= 0:
                raise UsageError(f"load.mode {config.get('load.mode')} needs load.rate > 0 requests/s (or a list of them)")
    for key in ("load.max_concurrency", "engine.max_num_seqs", "engine.max_model_len"):
        if config.get(key) is not None and config.get(key) < 1:
            raise UsageError(f"{key} must be >= 1, got {config.get(key)}")
    for key in ("load.slo_ttft_ms", "load.slo_tpot_ms", "engine.request_timeout_s", "engine.startup_timeout_s"):
        if config.get(key) is not None and config.get(key) <= 0:
            raise UsageError(f"{key} must be > 0, got {config.get(key)}")


def _check_gguf(key: str, path: str | None) -> None:
    if not path or not os.path.isfile(path) or not path.endswith(".gguf"):
        raise UsageError(f"{key}: llama.cpp serves .gguf files, got {path!r}; make one with llama.cpp's "
                         "convert_hf_to_gguf.py (see docs/serving.md)")


def server_ignored(config, spec) -> list[str]:
    """What a server backend does not honour, for one method (only options set explicitly or
    away from their defaults are listed)."""
    explicit = getattr(config, "explicit", {})
    ignored = [f"{key}={config.get(key)} (the native engine's option)" for key in NATIVE_ONLY if key in explicit]
    backend, launch = config.get("engine.backend"), config.get("engine.launch")
    if backend == "openai" and not launch:
        decided = ("engine.tensor_parallel_size", "engine.gpu_memory_utilization", "engine.max_model_len",
                   "engine.max_num_seqs", "engine.extra_args", "engine.spec_type", "speculative.num_speculative_tokens",
                   "speculative.draft_model")
        ignored += [f"{key}={config.get(key)} (the running server at engine.base_url decides)"
                    for key in decided if key in explicit]
    if launch == "llama.cpp":
        if config.get("engine.tensor_parallel_size") != 1:
            ignored.append(f"engine.tensor_parallel_size={config.get('engine.tensor_parallel_size')} (llama.cpp splits "
                           "layers across GPUs by itself; pass -sm/-ts in engine.extra_args)")
        if config.get("engine.gpu_memory_utilization") is not None:
            ignored.append("engine.gpu_memory_utilization (llama.cpp has no such setting)")
    if launch in ("llama.cpp", "sglang"):
        ignored += [f"{key} (vLLM's option)" for key in ("engine.enforce_eager", "engine.cpu_kvcache_gib",
                                                          "engine.cpu_threads_bind") if key in explicit]
    drafting = drafting_for(config, spec.backend, spec.gamma)
    if drafting and drafting.kind == "ngram" and launch in ("llama.cpp", "sglang") and "speculative.ngram_min" in explicit:
        ignored.append(f"speculative.ngram_min ({launch}'s n-gram drafting takes no minimum)")
    if drafting and drafting.kind == "ngram" and launch == "sglang" and "speculative.ngram_max" in explicit:
        ignored.append("speculative.ngram_max (SGLang's NGRAM options vary by version: pass them in engine.extra_args)")
    if backend == "vllm":
        if config.get("load.mode") != "fixed":
            ignored.append(f"load.mode={config.get('load.mode')} (vllm.LLM takes the whole batch at once)")
        for key in ("load.max_concurrency", "engine.launch", "engine.extra_args", "engine.api_key_env"):
            if key in explicit:
                ignored.append(f"{key} (vllm.LLM in this process)")
    return ignored


def native_ignored_server_keys(config) -> list[str]:
    """Server options a native run was given (listed as ignored, never silently dropped)."""
    explicit = getattr(config, "explicit", {})
    return [f"{key}={config.get(key)} (a server backend's option: set engine.backend openai)"
            for key in SERVER_ONLY if key in explicit]
