"""Serving engines as backends (docs/serving.md): an OpenAI-compatible streaming client
(``engine.backend: openai``), open-loop load, the engines' speculation counters, launchers for
vLLM / SGLang / llama.cpp servers, and vLLM's offline engine (``engine.backend: vllm``).

Modules: ``settings`` (config -> what one method asks of an engine), ``launchers`` (command
lines, server processes), ``openai_client`` (one streamed request), ``load`` (arrival times,
the open-loop driver), ``server_metrics`` (Prometheus counters -> acceptance), ``sessions``
(one engine for one method), ``vllm_offline``, ``records``, ``summary`` (rows per rate,
goodput, console table), ``checks`` (config checks, ignored options, ``--dry-run``), ``run``
(the loop :class:`~specdec.bench.runner.BenchmarkRunner` hands server runs to).
"""

from specdec.bench.backends.server.checks import SERVER_BACKENDS, is_server_backend

__all__ = ["SERVER_BACKENDS", "is_server_backend"]
