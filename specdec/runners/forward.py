"""One forward pass of a causal LM over new tokens of one row, appending to its KV cache
(a batch-1 helper for tests and benchmarks; the decode loop uses :mod:`specdec.runners`)."""

from __future__ import annotations

import torch

from specdec.runners.cache import KVCache
from specdec.runners.timing import ForwardClock


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


#: The old name of the forward timer; see :class:`specdec.runners.timing.ForwardClock`.
ForwardTimer = ForwardClock
