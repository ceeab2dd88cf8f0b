"""What a server or vLLM run would start, one block per method, without starting it
(``specdec bench --dry-run``)."""

from __future__ import annotations

from specdec.bench.backends.server.checks import SERVER_BACKENDS
from specdec.bench.backends.server.launchers import command_line, shell_line
from specdec.bench.backends.server.settings import api_of, server_settings
from specdec.bench.backends.vllm_offline import llm_kwargs


def describe(config, specs) -> list[str]:
    """What a run would start, one block per method (``--dry-run``), without starting it."""
    backend = config.get("engine.backend")
    lines = []
    if backend not in SERVER_BACKENDS:
        return [f"engine.backend {backend}: specdec's own engine in this process; nothing to launch"]
    for spec in specs:
        if backend == "vllm":
            lines.append(f"{spec.label}: vllm.LLM(**{llm_kwargs(config, spec)!r})")
        elif config.get("engine.launch"):
            port = config.get("engine.port") or 0
            argv = command_line(server_settings(config, spec.backend, spec.gamma, port))
            lines.append(f"{spec.label}: {shell_line(argv)}" + ("  (port 0: a free port is picked at start)" if not port else ""))
        else:
            path = "/v1/chat/completions" if api_of(config) == "chat" else "/v1/completions"
            lines.append(f"{spec.label}: POST {config.get('engine.base_url').rstrip('/')}{path} (a running server)")
    return lines
