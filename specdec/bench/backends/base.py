"""What every backend is to the runner: one method's engine that runs a batch of requests and
hands back one record per finished request.

The runner knows nothing else of a backend. It opens it (``with backend:`` loads models or
starts an engine), warms it up, gives it batches (``run_batch``), and closes it after its last
batch. Backends whose engines live in this process and share its models (``in_process``) stay
open together, so methods alternate request by request (A B A B: drift on a busy machine hits
every method alike), and the run's monitor measures them; a backend that holds an engine of its
own (a server, ``vllm.LLM``) runs its method's batches as one block, is closed before the next
method's engine starts, and the monitor's CPU figures are only the client's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from specdec.bench.workloads import Job, Prompt
from specdec.errors import UsageError


@dataclass(frozen=True)
class MethodSpec:
    """``label`` as the user wrote it, the ``backend`` name and its overrides (gamma)."""

    label: str
    backend: str
    gamma: int | None = None

    @classmethod
    def parse(cls, text: str, known: dict) -> "MethodSpec":
        """``name`` or ``name:gamma=K``; ``known`` maps method names to whether they draft."""
        name, _, options = text.partition(":")
        name = name.strip()
        if name in ("vllm", "openai", "sglang", "llama.cpp"):
            raise UsageError(f"method {name!r}: serving engines are not methods; set engine.backend: openai with "
                             f"engine.launch (vllm, sglang, llama.cpp) or engine.backend: vllm, and keep the methods "
                             "target, speculative, ngram (docs/serving.md)")
        if name not in known:
            raise UsageError(f"unknown method {name!r}: use one of {', '.join(known)} (optionally name:gamma=K)")
        gamma = None
        for option in filter(None, (o.strip() for o in options.split(","))):
            key, _, value = option.partition("=")
            if key != "gamma" or not value.isdigit() or int(value) < 1:
                raise UsageError(f"method {text!r}: the only option is gamma=K with K >= 1, e.g. speculative:gamma=4")
            gamma = int(value)
        if gamma is not None and not known[name]:
            raise UsageError(f"method {text!r}: {name} does not draft, so gamma does not apply")
        return cls(text.strip(), name, gamma)


@dataclass
class RunContext:
    """What every backend of one run shares: the config, the models loaded in this process
    (:class:`~specdec.bench.backends.local_models.Models`, loaded on first use), the results
    folder, the monitor (energy readings) and where lines for the user go."""

    config: object
    models: object
    folder: Path
    log: Callable[[str], None] = print
    monitor: object = None


@dataclass
class Batch:
    """Requests that one method runs together: one row label (``method`` or ``method@rate``),
    one rate (requests/s; None: no open-loop load) and repeat, and its jobs."""

    spec: MethodSpec
    rate: float | None
    repeat: int
    row: str
    jobs: list[Job]
    done: dict = field(default_factory=dict)  # record key -> record already in responses.jsonl

    def keys(self) -> list[str]:
        from specdec.bench.results import record_key

        return [record_key(self.row, job.prompt_id, t + 1, job.repeat)
                for job in self.jobs for t in range(len(job.prompt.turns))]

    def missing(self) -> int:
        """Requests (turns) of this batch not recorded yet."""
        return sum(1 for key in self.keys() if key not in self.done)


class Backend(Protocol):
    """One method's engine. ``in_process``: see the module docstring."""

    spec: MethodSpec
    in_process: bool

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc) -> bool: ...

    def admit(self, prompts: list[Prompt]) -> list[Prompt]:
        """The prompts this engine can serve (others are left out by name, never cut)."""

    def warmup(self, prompt: Prompt, count: int) -> None:
        """``count`` requests of the prompt's first turn, excluded from every figure."""

    def run_batch(self, batch: Batch, on_record: Callable[[dict], None]) -> None:
        """Run the batch's requests not in ``batch.done``; each finished request (or a failed
        or skipped one) goes to ``on_record`` as one record, as soon as it is known."""

    @classmethod
    def ignored_options(cls, spec: MethodSpec, config) -> list[str]:
        """Options set in the config that this method's backend cannot honour (reported, never
        silently dropped); asked without opening the backend."""
