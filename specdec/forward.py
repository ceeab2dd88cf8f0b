"""One timed forward pass of a causal LM over new tokens, appending to its KV cache."""

from __future__ import annotations

import torch

from .cache import KVCache
from .devices import synchronized_clock


def forward_logits(
    model: torch.nn.Module,
    cache: KVCache,
    new_tokens: list[int],
    device: torch.device,
    keep_logits: int = 1,
) -> torch.Tensor:
    """Run ``model`` on ``new_tokens`` after the positions already in ``cache``.

    Returns the logits of the last ``keep_logits`` positions, shape [keep_logits, vocab].
    Only those rows go through the LM head (``logits_to_keep``): on a 150k vocabulary the
    head costs as much as several layers, so prefill computes one row, not one per prompt token.
    """
    input_ids = torch.tensor([new_tokens], dtype=torch.long, device=device)
    start = cache.length
    position_ids = torch.arange(start, start + len(new_tokens), device=device).unsqueeze(0)
    output = model(
        input_ids=input_ids,
        position_ids=position_ids,
        past_key_values=cache.store,
        use_cache=True,
        logits_to_keep=keep_logits,
    )
    cache.advance(len(new_tokens))
    return output.logits[0, -keep_logits:]


class ForwardTimer:
    """Counts forward passes and sums their synchronized wall time (seconds), prefill and
    decode phase apart (``t_target`` / ``t_draft`` are decode-phase means)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.count = 0
        self.decode_count = 0
        self.decode_seconds = 0.0
        self.prefill_seconds = 0.0

    def run(self, fn, *args, prefill: bool = False, **kwargs):
        """Call ``fn`` and account for its time as prefill or decode phase."""
        started = synchronized_clock(self.device)
        result = fn(*args, **kwargs)
        elapsed = synchronized_clock(self.device) - started
        self.count += 1
        if prefill:
            self.prefill_seconds += elapsed
        else:
            self.decode_seconds += elapsed
            self.decode_count += 1
        return result

    @property
    def mean_decode_seconds(self) -> float | None:
        """Mean seconds of one decode-phase forward, or None when there was none."""
        return self.decode_seconds / self.decode_count if self.decode_count else None
