"""Backends: every way of running a method's requests, behind one interface
(:class:`~specdec.bench.backends.base.Backend`: open, warm up, ``run_batch`` -> records, close).

Siblings, one module or folder each:

- :mod:`~specdec.bench.backends.native`: specdec's engine: ``target`` (the autoregressive
  baseline), ``speculative`` (draft model), ``ngram`` (prompt lookup);
- :mod:`~specdec.bench.backends.hf`: transformers' own ``generate`` as a reference peer:
  ``hf_generate``, ``hf_assisted`` (``assistant_model=``), ``hf_prompt_lookup``;
- :mod:`~specdec.bench.backends.server`: an OpenAI-compatible server (``engine.backend:
  openai``), launched per method (vLLM, SGLang, llama.cpp) or already running;
- :mod:`~specdec.bench.backends.vllm_offline`: ``vllm.LLM`` in this process (``engine.backend:
  vllm``).

With a server or vLLM, the methods ``target`` / ``speculative`` / ``ngram`` name that engine
without and with speculation. A method is a backend plus overrides, written ``name`` or
``name:gamma=K`` (sweeps use that). This module only chooses: :func:`make_backend`.
"""

from __future__ import annotations

from dataclasses import dataclass

from specdec.bench.backends.base import Backend, Batch, MethodSpec, RunContext
from specdec.bench.backends.hf import HFBackend
from specdec.bench.backends.in_process import generation_config
from specdec.bench.backends.local_models import Models, batch_size
from specdec.bench.backends.native import NativeBackend
from specdec.bench.backends.server.checks import check_native_load, check_server_config, is_server_backend
from specdec.errors import UsageError

__all__ = ["BACKENDS", "Backend", "Batch", "MethodSpec", "Models", "RunContext", "backend_class", "batch_size",
           "check_methods", "generation_config", "make_backend"]


@dataclass(frozen=True)
class MethodInfo:
    factory: type
    drafts: bool
    needs_draft_model: bool


#: the methods of in-process runs (servers take target / speculative / ngram)
BACKENDS: dict[str, MethodInfo] = {
    "target": MethodInfo(NativeBackend, False, False),
    "speculative": MethodInfo(NativeBackend, True, True),
    "ngram": MethodInfo(NativeBackend, True, False),
    "hf_generate": MethodInfo(HFBackend, False, False),
    "hf_assisted": MethodInfo(HFBackend, True, True),
    "hf_prompt_lookup": MethodInfo(HFBackend, True, False),
}


def backend_class(spec: MethodSpec, config) -> type:
    """The class that runs ``spec`` under ``config`` (the only place that chooses)."""
    backend = config.get("engine.backend")
    if backend == "openai":
        from specdec.bench.backends.server.backend import OpenAIServerBackend

        return OpenAIServerBackend
    if backend == "vllm":
        from specdec.bench.backends.vllm_offline import VllmOfflineBackend

        return VllmOfflineBackend
    return BACKENDS[spec.backend].factory


def make_backend(spec: MethodSpec, run: RunContext) -> Backend:
    """The backend that runs ``spec`` in ``run`` (not opened yet)."""
    return backend_class(spec, run.config)(spec, run)


def parse_method(text: str) -> MethodSpec:
    return MethodSpec.parse(text, {name: info.drafts for name, info in BACKENDS.items()})


def check_methods(config) -> list[MethodSpec]:
    """Parse and check the configured methods before anything loads."""
    specs = [parse_method(m) for m in config.methods]
    if not specs:
        raise UsageError("no methods to run: set run.methods (e.g. target,speculative) or --methods")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"a method is listed twice in {', '.join(labels)}")
    if is_server_backend(config):
        check_server_config(config, specs)
        return specs
    check_native_load(config)
    for spec in specs:
        needs = BACKENDS[spec.backend].needs_draft_model and not (
            spec.backend == "speculative" and config.get("speculative.method") == "ngram")
        if needs and not config.get("speculative.draft_model"):
            raise UsageError(f"method {spec.label} needs a draft model: set speculative.draft_model, DRAFTER_MODEL or "
                             "--draft-model, or use the ngram method")
    return specs
