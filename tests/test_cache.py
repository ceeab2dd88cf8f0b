"""KV-cache rollback is exact: after feeding tokens, cropping with ``KVCache.crop`` and feeding
different tokens, the logits equal those of a fresh forward over the same full sequence. And
the engine really uses its caches: no forward recomputes the prefix.

Tolerance: float32, atol 1e-4 and rtol 1e-4 on the logits (a cached and an uncached forward
differ only by the order of floating-point sums; a stale key/value left behind by a wrong
crop changes logits by orders of magnitude more, as the negative control shows).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import IdTokenizer, make_tiny_llama
from specdec.runners.cache import KVCache
from specdec.engine.drafters import ModelDraft
from specdec.engine import Engine, GenerationConfig
from specdec.runners.forward import forward_logits
from specdec.engine.sampling import GREEDY

CPU = torch.device("cpu")
ATOL = RTOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_logits(model, tokens: list[int], rows: int) -> torch.Tensor:
    """Logits of the last ``rows`` positions from one uncached forward over ``tokens``."""
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0, -rows:]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama(seed=21, vocab_size=64, layers=2)


@pytest.fixture(scope="module")
def stories(stories_path):
    return AutoModelForCausalLM.from_pretrained(stories_path).eval()


@pytest.mark.parametrize("model_name", ["tiny", "stories"])
def test_crop_then_feed_different_tokens_equals_a_fresh_forward(request, model_name):
    model = request.getfixturevalue(model_name)
    prompt = [5, 9, 13, 2, 40, 7, 30]
    rejected = [11, 12, 13, 14]
    replacement = [50, 51, 52]
    cache = KVCache(model)
    with torch.inference_mode():
        forward_logits(model, cache, prompt, CPU)
        forward_logits(model, cache, rejected, CPU, keep_logits=len(rejected))
        assert cache.length == len(prompt) + len(rejected)
        keep = len(prompt) + 1  # keep the first "draft", drop the other three
        cache.crop(keep)
        assert cache.length == keep
        assert cache.store.get_seq_length() == keep
        logits = forward_logits(model, cache, replacement, CPU, keep_logits=len(replacement))
    expected = fresh_logits(model, prompt + rejected[:1] + replacement, len(replacement))
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)


def test_repeated_rollbacks_over_a_generation_stay_equal_to_fresh_forwards(tiny):
    """Many steps of speculate-and-roll-back, as the engine does, never drift from the truth."""
    generator = torch.Generator().manual_seed(0)
    sequence = [1, 2, 3]
    cache = KVCache(tiny)
    with torch.inference_mode():
        forward_logits(tiny, cache, sequence[:-1], CPU)
        for _ in range(8):
            drafts = torch.randint(0, 64, (4,), generator=generator).tolist()
            logits = forward_logits(tiny, cache, [sequence[-1]] + drafts, CPU, keep_logits=5)
            torch.testing.assert_close(logits, fresh_logits(tiny, sequence + drafts, 5), atol=ATOL, rtol=RTOL)
            accepted = int(torch.randint(0, 5, (1,), generator=generator))
            sequence = sequence + drafts[:accepted] + [int(torch.randint(0, 64, (1,), generator=generator))]
            cache.crop(len(sequence) - 1)
            assert cache.length == cache.store.get_seq_length() == len(sequence) - 1


def test_crop_to_zero_then_refeed_equals_a_fresh_forward(tiny):
    cache = KVCache(tiny)
    with torch.inference_mode():
        forward_logits(tiny, cache, [4, 5, 6, 7], CPU)
        cache.crop(0)
        assert cache.length == 0
        logits = forward_logits(tiny, cache, [8, 9, 10], CPU, keep_logits=3)
    torch.testing.assert_close(logits, fresh_logits(tiny, [8, 9, 10], 3), atol=ATOL, rtol=RTOL)


def test_crop_at_or_beyond_the_cached_length_is_a_no_op(tiny):
    cache = KVCache(tiny)
    with torch.inference_mode():
        forward_logits(tiny, cache, [4, 5, 6], CPU)
        cache.crop(3)
        cache.crop(10)
        assert cache.length == cache.store.get_seq_length() == 3
        logits = forward_logits(tiny, cache, [7], CPU)
    torch.testing.assert_close(logits, fresh_logits(tiny, [4, 5, 6, 7], 1), atol=ATOL, rtol=RTOL)


def test_forward_logits_rows_are_the_last_positions_of_a_full_forward(tiny):
    cache = KVCache(tiny)
    with torch.inference_mode():
        forward_logits(tiny, cache, [1, 2, 3], CPU)
        rows = forward_logits(tiny, cache, [4, 5, 6, 7], CPU, keep_logits=4)
    assert rows.shape == (4, 64)
    torch.testing.assert_close(rows, fresh_logits(tiny, [1, 2, 3, 4, 5, 6, 7], 4), atol=ATOL, rtol=RTOL)


def test_without_the_crop_stale_drafts_change_the_logits(tiny):
    """Negative control: the comparison above can fail. Skipping the rollback (stale rejected
    keys/values left in the cache) gives logits far outside the tolerance."""
    cache = KVCache(tiny)
    with torch.inference_mode():
        forward_logits(tiny, cache, [5, 9, 13, 2], CPU)
        forward_logits(tiny, cache, [11, 12, 13], CPU, keep_logits=3)
        # no crop: the cache still holds the three rejected tokens
        logits = forward_logits(tiny, cache, [50, 51], CPU, keep_logits=2)
    expected = fresh_logits(tiny, [5, 9, 13, 2, 50, 51], 2)
    assert not torch.allclose(logits, expected, atol=ATOL, rtol=RTOL)


# --- the engine uses its caches: nothing is recomputed --------------------------------------------


def record_input_lengths(model) -> tuple[list[int], object]:
    """Record the number of tokens of every forward of ``model``; returns (lengths, hook handle)."""
    lengths: list[int] = []

    def hook(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        lengths.append(int(input_ids.shape[-1]))

    return lengths, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("speculative", [True, False], ids=["speculative", "autoregressive"])
def test_engine_feeds_each_token_once_instead_of_recomputing_the_prefix(tiny, speculative):
    """After the prefill, a target forward feeds only the last token plus the drafts (the KV-cached
    baseline feeds one token), and the draft model feeds only what its cache lacks."""
    draft = make_tiny_llama(seed=22, vocab_size=64, layers=1)
    prompt = list(range(1, 31))
    target_lengths, target_hook = record_input_lengths(tiny)
    draft_lengths, draft_hook = record_input_lengths(draft)
    try:
        engine = Engine(tiny, IdTokenizer(64), CPU, eos_token_ids=set())
        config = GenerationConfig(max_new_tokens=20, sampling=GREEDY, gamma=4, seed=0)
        stats = engine.generate(prompt, config, ModelDraft(draft, 64) if speculative else None).stats
    finally:
        target_hook.remove()
        draft_hook.remove()
    assert target_lengths[0] == len(prompt)
    assert len(target_lengths) == stats["target_forwards"]
    assert sum(target_lengths[1:]) == stats["steps"] + stats["proposed"]
    assert max(target_lengths[1:]) <= (1 + 4 if speculative else 1)
    if speculative:
        # The draft's first forward reads the prompt and the target's first token; after that,
        # every kept token at most once and every rejected draft at most once.
        assert draft_lengths[0] == len(prompt) + 1
        assert sum(draft_lengths) <= len(prompt) + stats["new_tokens"] + stats["proposed"]
