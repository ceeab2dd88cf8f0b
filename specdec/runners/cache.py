"""A model's KV cache with rollback, through transformers' public cache API only.

Speculative decoding writes the KV of draft tokens that may be rejected; rolling them back
must use the public ``Cache.crop`` (private fields change between versions).

Sliding-window layers (Mistral, Gemma 2/3, Qwen with ``use_sliding_window``, gpt-oss) keep
only the last ``window - 1`` positions, so once the window is exceeded a rejected draft could
not be cropped without losing the position that slid out for it. transformers' public answer
is ``Cache.activate_past_recording()``: a sliding layer then keeps everything until the next
``crop`` (which trims it back to the window). :func:`new_cache` turns it on for any model that
has such layers, and every forward is followed by a ``crop`` (``crop(0)`` when nothing is
rejected), as :func:`crop_cache` and the runners do.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, StaticCache

# transformers 5.x changed ``crop``: older releases take the length to keep, newer ones a
# negative number of tokens to remove. Detect which once, from the public signature.
_CROP_TAKES_TOKENS_TO_REMOVE = "tokens_to_remove" in inspect.signature(DynamicCache.crop).parameters


def has_sliding_layers(cache) -> bool:
    """True when any layer of ``cache`` keeps a sliding window rather than every position."""
    return any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", ()))


def new_cache(model: torch.nn.Module, static_length: int | None = None):
    """A fresh cache for ``model``: dynamic, or static with ``static_length`` slots.

    Sliding-window layers record their past (see the module docstring) so rollback is exact.
    """
    if static_length is None:
        cache = DynamicCache(config=model.config)
    else:
        cache = StaticCache(config=model.config, max_cache_len=static_length)
    if has_sliding_layers(cache):
        cache.activate_past_recording()
    return cache


def crop_cache(cache, tokens_to_remove: int, current_length: int) -> None:
    """Drop the last ``tokens_to_remove`` positions of ``cache`` (which holds
    ``current_length``). Called after every forward, also with 0: a sliding layer trims its
    recorded past back to the window there."""
    if tokens_to_remove == 0 and not has_sliding_layers(cache):
        return
    if _CROP_TAKES_TOKENS_TO_REMOVE:
        cache.crop(-tokens_to_remove)  # negative: how many to remove
    else:  # pragma: no cover - transformers releases before the signature change
        cache.crop(current_length - tokens_to_remove)


class KVCache:
    """One model's cache plus the number of positions it holds (batch 1).

    ``length`` is kept here rather than asked of the cache each step, because asking
    (``get_seq_length``) walks the layers.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.store = new_cache(model)
        self.length = 0

    def advance(self, num_positions: int) -> None:
        """Record that a forward pass appended ``num_positions`` positions."""
        self.length += num_positions

    def crop(self, keep: int) -> None:
        """Drop every position from ``keep`` on (trims a sliding window even when nothing is dropped)."""
        remove = max(self.length - keep, 0)
        crop_cache(self.store, remove, self.length)
        self.length -= remove
