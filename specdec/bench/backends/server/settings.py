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
from pathlib import Path

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
    dtype: str | None = None  # None or "auto": the engine's default (the checkpoint's dtype)
    enforce_eager: bool = False
    env: tuple[tuple[str, str], ...] = ()  # environment variables added for the server process


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
        dtype=config.get("engine.dtype"),
        enforce_eager=bool(config.get("engine.enforce_eager")),
        env=tuple(sorted(vllm_cpu_env(config, preload=True)[0].items())) if engine == "vllm" else (),
    )


# --------------------------------------------------------------------------------------------
# vLLM's CPU build (scripts/setup-vllm.sh; docs/serving.md "vLLM on a CPU")
def vllm_env_dir() -> Path:
    """The virtual environment of scripts/setup-vllm.sh (``$SPECDEC_VLLM_ENV``)."""
    return Path(os.environ.get("SPECDEC_VLLM_ENV") or Path.home() / ".cache" / "specdec" / "vllm-env")


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def default_kvcache_gib() -> int:
    """A quarter of the memory available now, 1 to 8 GiB (vLLM's default, 92% of the node, refuses
    to start whenever other processes hold memory)."""
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:
        available = 4 * 2**30
    return max(1, min(8, int(available / 2**30 / 4)))


def cpu_thread_bind(tp: int, cores: list[int] | None = None) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``tp`` ranks: the allowed cores split into ``tp``
    groups ("0|1" on two cores, "0-3|4-7" on eight)."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else sorted(cores)
    if len(cores) < tp:
        raise UsageError(f"engine.tensor_parallel_size {tp} on vLLM's CPU build needs {tp} cores, {len(cores)} are "
                         "allowed here: lower it, or set engine.cpu_threads_bind")
    size = len(cores) // tp

    def span(group):
        contiguous = group == list(range(group[0], group[-1] + 1))
        return f"{group[0]}-{group[-1]}" if contiguous and len(group) > 1 else ",".join(map(str, group))

    return "|".join(span(cores[i * size:(i + 1) * size]) for i in range(tp))


def preload_line(env_dir: Path | None = None) -> str:
    """The ``LD_PRELOAD`` that setup-vllm.sh wrote (Intel OpenMP + tcmalloc), or ""."""
    path = (env_dir or vllm_env_dir()) / "specdec-vllm.env"
    try:
        for line in path.read_text().splitlines():
            if line.startswith("LD_PRELOAD="):
                return line.partition("=")[2].strip()
    except OSError:
        pass
    return ""


def vllm_cpu_env(config, preload: bool, cuda: bool | None = None, environ=None) -> tuple[dict, list[str]]:
    """(variables, notes): what vLLM's CPU build needs in its environment, without CUDA:
    ``VLLM_CPU_KVCACHE_SPACE`` (``engine.cpu_kvcache_gib``, else already set, else a quarter of
    the available memory), ``LD_PRELOAD`` of Intel OpenMP and tcmalloc from setup-vllm.sh's env
    file (``preload``: a process still to start), and for ``engine.tensor_parallel_size`` > 1
    ``VLLM_CPU_OMP_THREADS_BIND`` (``engine.cpu_threads_bind``, else the allowed cores split per
    rank) with ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``. Variables already set are kept. With CUDA:
    nothing."""
    environ = os.environ if environ is None else environ
    if cuda is None:
        cuda = has_cuda()
    if cuda:
        return {}, []
    env, notes = {}, []
    gib = config.get("engine.cpu_kvcache_gib")
    if gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{gib:g}"
    elif "VLLM_CPU_KVCACHE_SPACE" not in environ:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(default_kvcache_gib())
    bind = config.get("engine.cpu_threads_bind")
    tp = config.get("engine.tensor_parallel_size") or 1
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    elif tp > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in environ:
        try:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_bind(tp)
        except UsageError as error:  # vLLM says why it cannot start; this says what to set
            notes.append(str(error))
    if tp > 1 and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    if preload:
        if environ.get("LD_PRELOAD"):
            pass  # the user's own preload wins
        elif preload_line():
            env["LD_PRELOAD"] = preload_line()
        else:
            notes.append(f"vLLM runs without Intel OpenMP / tcmalloc preloaded (no LD_PRELOAD in "
                         f"{vllm_env_dir() / 'specdec-vllm.env'}: run bash scripts/setup-vllm.sh); slower")
    return env, notes


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
