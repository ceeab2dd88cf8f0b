"""Guarantees stated once, checked against mutants of the engine.

- The token budget is spent exactly: a step never proposes more drafts than the budget can
  keep, so no draft the target accepts is thrown away for lack of room (``accepted ==
  accepted_kept`` when nothing else stops the generation), and no forward feeds more tokens
  than are left to generate. (A budget off by one, ``remaining`` instead of ``remaining - 1``,
  still returns ``max_new_tokens`` tokens, because the stopping rule cuts the extra one; only
  these figures expose it.)
- Speculation never changes the number of target forwards' worth of output: tokens = steps'
  tokens + the prefill token.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.engine.sampling import GREEDY, SamplingParams

CPU = torch.device("cpu")
VOCAB = 48
PROMPT = [3, 9, 4, 9, 3, 9, 4]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    return make_tiny_llama(seed=71, vocab_size=VOCAB, layers=1)


def widths_of_target_forwards(model) -> tuple[list[int], object]:
    widths: list[int] = []

    def hook(module, args, kwargs):
        widths.append(int(kwargs["input_ids"].shape[-1]))

    return widths, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(temperature=0.7)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("max_new_tokens", [2, 3, 5, 6, 9, 17])
@pytest.mark.parametrize("gamma", [1, 4, 8])
def test_no_step_proposes_a_draft_the_budget_cannot_keep(target, sampling, max_new_tokens, gamma):
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=sampling, gamma=gamma, seed=3)
    draft = copy.deepcopy(target)  # before the hook, which a deep copy would carry along
    widths, hook = widths_of_target_forwards(target)
    try:
        # A copy of the target drafts (hooks see the target's forwards only): every draft is accepted, so every step is a
        # multi-token accept and the last one runs into the budget.
        result = engine.generate(PROMPT, config, ModelDraft(draft, VOCAB, prepack=False))
    finally:
        hook.remove()
    stats = result.stats
    assert len(result.token_ids) == stats["new_tokens"] == max_new_tokens
    assert stats["accepted"] == stats["accepted_kept"], stats
    produced = 1  # the prefill's token
    for width in widths[1:]:  # each step feeds [last, drafts...] and yields at most width tokens
        assert width <= max_new_tokens - produced, (widths, max_new_tokens)
        produced += width
    assert produced == max_new_tokens


@pytest.mark.parametrize("drafter", ["ngram", "adaptive draft"])
def test_tokens_are_the_prefill_token_plus_what_the_steps_kept(target, drafter):
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    make = {"ngram": NgramDraft, "adaptive draft": lambda: ModelDraft(target, VOCAB, DraftLengthPolicy("adaptive", 0.4))}
    result = engine.generate(PROMPT, GenerationConfig(max_new_tokens=23, sampling=GREEDY, gamma=2), make[drafter]())
    stats = result.stats
    assert stats["new_tokens"] == 1 + round(stats["tau"] * stats["steps"])
    assert sum(int(g) * n for g, n in stats["proposal_lengths"].items()) == stats["proposed"]
