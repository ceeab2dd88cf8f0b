"""Turning logits into a distribution and drawing from it.

The same :func:`warp_logits` is applied to the target's and the draft's logits: speculative
sampling is lossless only when both distributions are warped identically (temperature, top-k,
top-p), so there is exactly one place where that happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Temperatures at or below this decode greedily (argmax) instead of dividing by ~0.
GREEDY_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen.

    temperature: 0 (or <= 1e-6) means greedy argmax; otherwise logits are divided by it.
    top_k: keep the k most likely tokens (0 or None = no limit, as in transformers).
    top_p: keep the smallest set of tokens whose probability sums to at least top_p (1.0 or
        None = all).
    """

    temperature: float = 1.0
    top_k: int | None = 0
    top_p: float | None = 1.0

    def __post_init__(self) -> None:
        from specdec.errors import UsageError

        # transformers' GenerationConfig writes "off" as None; store the numeric "off".
        if self.top_k is None:
            object.__setattr__(self, "top_k", 0)
        if self.top_p is None:
            object.__setattr__(self, "top_p", 1.0)
        if not self.temperature >= 0:  # also refuses NaN
            raise UsageError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"top_k must be >= 0 (0 means no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top_p must be in (0, 1] (1 means no limit), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """True when decoding is argmax (temperature <= 1e-6)."""
        return self.temperature <= GREEDY_TEMPERATURE


GREEDY = SamplingParams(temperature=0.0)


def warp_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply temperature, top-k and top-p to ``logits`` of shape [..., vocab].

    Returns float32 logits with removed tokens set to -inf. Only meaningful for sampling;
    greedy decoding takes the argmax of the raw logits.
    """
    logits = logits.float()
    if params.temperature != 1.0:
        logits = logits / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth_largest = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the most likely
        # token is always kept.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, sorted_index, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The warped distribution (float32, rows sum to 1) for ``logits`` of shape [..., vocab]."""
    return warp_logits(logits, params).softmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one token id per row of ``probs`` [rows, vocab]; returns a LongTensor [rows]."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def sample_unnormalized(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one index per row of non-negative ``weights`` [rows, vocab], with probability
    proportional to the weights (no normalization needed), without a host sync.

    The exponential race (gpt-fast's ``multinomial_sample_one_no_sync``): with E_i ~ Exp(1)
    independent, argmax_i w_i / E_i is distributed as w / sum(w). ``torch.multinomial`` checks
    its input on the host, which stalls a GPU once per draw.
    """
    # float64: an Exp(1) draw of exactly 0 (which would make 0/0) has probability ~2^-53 per
    # entry instead of ~2^-24 in float32, where a 150k vocabulary would meet one in 1% of draws.
    race = torch.empty_like(weights, dtype=torch.float64).exponential_(1.0, generator=generator)
    return (weights.double() / race).argmax(dim=-1)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A random generator on ``device`` seeded once per generation (never inside the loop)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
