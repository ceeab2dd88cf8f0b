"""specdec's own engine as a backend: ``target`` (the autoregressive baseline), ``speculative``
(a draft model) and ``ngram`` (prompt lookup), all on the run's shared models."""

from __future__ import annotations

from specdec.bench.backends.in_process import InProcessBackend
from specdec.bench.backends.local_models import batch_size
from specdec.bench.backends.server.checks import native_ignored_server_keys
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft, NgramDraft
from specdec.engine.loop import GenerationConfig, GenerationResult


def native_ignored(config, batches: bool = True) -> list[str]:
    """Serving options the native engine cannot honour (set to non-defaults). ``batches``:
    whether the backend decodes batches (specdec's engine does; transformers' assisted
    generation is batch-1 only)."""
    ignored = []
    checks = {
        "engine.tensor_parallel_size": lambda v: v != 1,
        "engine.gpu_memory_utilization": lambda v: v is not None,
    }
    for key, is_set in checks.items():
        if is_set(config.get(key)):
            ignored.append(f"{key}={config.get(key)} (the native engine runs on one device)")
    if config.get("engine.gpu_strategy") != "multi_gpu_ratio":
        for key in ("engine.target_gpu_ratio", "engine.drafter_gpu_ratio"):
            if config.get(key) != 1:
                ignored.append(f"{key}={config.get(key)} (applies to gpu_strategy multi_gpu_ratio only)")
    for entry in config.get("speculative.unsupported") or []:
        ignored.append(f"speculative_config {entry} (the native drafters are a draft model and n-gram lookup)")
    if not batches and batch_size(config) > 1:
        ignored.append(f"engine.batch_size={batch_size(config)} (transformers' generate runs the rows one at a time)")
    return ignored + native_ignored_server_keys(config)


def uses_ngram(spec, config) -> bool:
    """Whether the method drafts by n-gram lookup (``ngram``, or ``speculative`` with
    ``speculative.method: ngram``)."""
    return spec.backend == "ngram" or (spec.backend == "speculative" and config.get("speculative.method") == "ngram")


class NativeBackend(InProcessBackend):
    """specdec's engine, with no drafter (``target``), a draft model, or n-gram lookup."""

    def __init__(self, spec, run) -> None:
        super().__init__(spec, run)
        self._drafter = None

    @property
    def drafter(self):
        if self.name == "target":
            return None
        if self._drafter is None:
            if self.uses_ngram:
                self._drafter = NgramDraft(self.config.get("speculative.ngram_max"), self.config.get("speculative.ngram_min"),
                                           match=self.config.get("speculative.ngram_match"))
            else:
                policy = DraftLengthPolicy(self.config.get("speculative.draft_schedule"),
                                           self.config.get("speculative.confidence_threshold"),
                                           gate=self.config.get("speculative.draft_gate"))
                self._drafter = ModelDraft(
                    self.models.draft.model, self.models.vocab_size, policy,
                    prepack=self.config.get("engine.prepack"), draft_vocab=self.config.get("speculative.draft_vocab"),
                    keep_ids=self.models.keep_ids,
                )
        return self._drafter

    @property
    def uses_ngram(self) -> bool:
        return uses_ngram(self.spec, self.config)

    def prepare(self) -> None:
        """Load what this backend needs (models load before the first timed request)."""
        self.models.engine
        self.drafter

    def generate(self, prompt_ids, config: GenerationConfig) -> GenerationResult:
        return self.models.engine.generate(prompt_ids, config, self.drafter)

    def generate_batch(self, prompts: list[list[int]], config: GenerationConfig) -> list[GenerationResult]:
        """Every prompt of ``prompts`` decoded together as one batch (ragged rows)."""
        return self.models.engine.generate_batch(prompts, config, self.drafter)

    @classmethod
    def ignored_options(cls, spec, config) -> list[str]:
        ignored = native_ignored(config)
        if uses_ngram(spec, config) and config.get("speculative.draft_schedule") == "adaptive":
            ignored.append("speculative.draft_schedule=adaptive (n-gram drafting proposes a constant length)")
        return ignored
