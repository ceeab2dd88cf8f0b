"""What one generation asks for (:class:`GenerationConfig`) and what it returns
(:class:`GenerationResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.engine.sampling import SamplingParams
from specdec.errors import UsageError


@dataclass
class GenerationConfig:
    """What one generation does.

    max_new_tokens: upper bound on generated tokens (prompt excluded).
    sampling: temperature / top-k / top-p; temperature 0 is greedy.
    gamma: draft tokens per step (the starting length when the drafter adapts it).
    seed: seeds the generation's random generator once; None draws a fresh seed per call
        (reported in the stats as ``seed`` so any run can be repeated). A batch shares one
        generator, so a sampled row's output depends on the batch it ran in.
    stop_strings: stop when the generated text contains one of these (text is cut before it).
    ignore_eos: keep generating past end-of-sequence tokens (benchmarks with fixed lengths).
    """

    max_new_tokens: int = 50
    sampling: SamplingParams = field(default_factory=SamplingParams)
    gamma: int = 4
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.gamma < 1:
            raise UsageError(f"gamma (draft tokens per step) must be >= 1, got {self.gamma}")


@dataclass
class GenerationResult:
    """One finished generation.

    text: the generated text (prompt excluded, special tokens removed).
    token_ids: the generated token ids (prompt excluded).
    stats: metrics keyed by the names of ../shared/docs/metrics.md (seconds, counts, ratios).
    """

    text: str
    token_ids: list[int]
    stats: dict
