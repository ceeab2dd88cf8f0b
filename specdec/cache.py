"""A model's KV cache with rollback, through transformers' public cache API only.

Speculative decoding writes the KV of draft tokens that may be rejected; rolling them back
must use the public ``DynamicCache.crop`` (private fields change between versions).
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

# transformers 5.x changed ``crop``: older releases take the length to keep, newer ones a
# negative number of tokens to remove. Detect which once, from the public signature.
_CROP_TAKES_TOKENS_TO_REMOVE = "tokens_to_remove" in inspect.signature(DynamicCache.crop).parameters


class KVCache:
    """One model's cache plus the number of positions it holds.

    ``length`` is kept here rather than asked of the cache each step, because asking
    (``get_seq_length``) walks the layers.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.store = DynamicCache(config=model.config)
        self.length = 0

    def advance(self, num_positions: int) -> None:
        """Record that a forward pass appended ``num_positions`` positions."""
        self.length += num_positions

    def crop(self, keep: int) -> None:
        """Drop every position from ``keep`` on (no-op when the cache holds ``keep`` or fewer)."""
        if keep >= self.length:
            return
        if _CROP_TAKES_TOKENS_TO_REMOVE:
            self.store.crop(keep - self.length)  # negative: how many to remove
        else:  # pragma: no cover - transformers releases before the signature change
            self.store.crop(keep)
        self.length = keep
