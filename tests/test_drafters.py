"""Drafters propose what they claim to: n-gram prompt lookup (longest n first, most recent
match, never the tail itself, nothing when nothing matches, at most max_tokens) pays off on
repetitive text; the draft model's cache rollback makes its proposals equal to a fresh
drafter's; the draft-length schedules follow their stated rules."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft, NgramDraft, lookup_continuation
from specdec.engine import Engine, GenerationConfig
from specdec.errors import UsageError
from specdec.models.loading import eos_token_ids
from specdec.engine.sampling import GREEDY, SamplingParams, make_generator

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


# --- lookup_continuation ----------------------------------------------------------------------


def test_lookup_prefers_the_longest_matching_ngram():
    # Tail (7, 8, 9): the trigram matches at index 4 -> continuation 50, 51; the unigram 9
    # alone matches more recently at index 10 (followed by 60), which must lose.
    context = [1, 2, 3, 4, 7, 8, 9, 50, 51, 5, 9, 60, 7, 8, 9]
    assert lookup_continuation(context, 2, max_ngram=3, min_ngram=1) == [50, 51]


def test_lookup_takes_the_earliest_of_several_matches_by_default_as_transformers_does():
    context = [5, 6, 10, 11, 5, 6, 20, 21, 0, 5, 6]
    assert lookup_continuation(context, 2, max_ngram=2, min_ngram=2) == [10, 11]


def test_lookup_can_take_the_most_recent_match():
    context = [5, 6, 10, 11, 5, 6, 20, 21, 0, 5, 6]
    assert lookup_continuation(context, 2, max_ngram=2, min_ngram=2, match="latest") == [20, 21]


def test_unknown_ngram_match_policy_is_a_usage_error():
    from specdec.errors import UsageError

    with pytest.raises(UsageError, match="earliest"):
        NgramDraft(match="first")


def test_lookup_falls_back_to_shorter_ngrams():
    context = [1, 2, 3, 4, 5, 9, 3]  # only the unigram (3) occurs earlier
    assert lookup_continuation(context, 3, max_ngram=3, min_ngram=1) == [4, 5, 9]


def test_lookup_respects_min_ngram():
    context = [1, 2, 3, 4, 5, 9, 3]
    assert lookup_continuation(context, 3, max_ngram=3, min_ngram=2) == []


def test_lookup_never_matches_the_tail_itself():
    assert lookup_continuation([1, 2, 3], 2, max_ngram=3, min_ngram=1) == []
    assert lookup_continuation([4, 5, 6, 7], 4, max_ngram=2, min_ngram=1) == []


def test_lookup_returns_nothing_without_a_match():
    assert lookup_continuation([10, 11, 12, 13, 14], 3, max_ngram=3, min_ngram=1) == []


def test_lookup_caps_the_continuation_at_max_tokens():
    context = [1, 2, 3, 4, 5, 6, 7, 1, 2]
    assert lookup_continuation(context, 3, max_ngram=2, min_ngram=1) == [3, 4, 5]
    assert lookup_continuation(context, 1, max_ngram=2, min_ngram=1) == [3]
    assert lookup_continuation(context, 0, max_ngram=2, min_ngram=1) == []


def test_lookup_continuation_may_run_into_the_tail_and_stops_at_the_context_end():
    # Periodic context: the only earlier (1, 2) is at index 0; what follows it is the tail 1, 2.
    assert lookup_continuation([1, 2, 1, 2], 5, max_ngram=2, min_ngram=2) == [1, 2]


def test_lookup_works_when_the_context_is_shorter_than_max_ngram():
    assert lookup_continuation([4, 4], 3, max_ngram=5, min_ngram=1) == [4]
    assert lookup_continuation([4], 3, max_ngram=5, min_ngram=1) == []


@pytest.mark.parametrize("sizes", [dict(max_ngram=3, min_ngram=0), dict(max_ngram=1, min_ngram=2)])
def test_invalid_ngram_sizes_raise_usage_error(sizes):
    with pytest.raises(UsageError):
        NgramDraft(**sizes)


def test_ngram_proposal_is_deterministic_with_no_draft_distribution():
    drafter = NgramDraft()
    drafter.reset(CPU)
    proposal = drafter.propose([[1, 2, 3, 1, 2]], [4], SamplingParams(), make_generator(CPU, 0))
    assert proposal.row(0) == [3, 1, 2] and proposal.probs is None and proposal.host_lengths == [3]


# --- n-gram drafting pays off on repetitive text -------------------------------------------------


@pytest.fixture(scope="module")
def stories(stories_path):
    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    model = AutoModelForCausalLM.from_pretrained(stories_path).eval()
    return Engine(model, tokenizer, CPU, eos_token_ids(model, tokenizer)), tokenizer


def test_ngram_drafter_is_accepted_and_saves_target_forwards_on_repetitive_text(stories):
    engine, tokenizer = stories
    prompt = tokenizer(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
        "Once upon a time, there was a little girl named Lily."
    )["input_ids"]
    config = GenerationConfig(max_new_tokens=40, sampling=GREEDY, gamma=4, seed=0)
    baseline = engine.generate(prompt, config, None)
    speculative = engine.generate(prompt, config, NgramDraft())
    assert speculative.token_ids == baseline.token_ids
    assert speculative.stats["accepted"] > 0
    assert speculative.stats["target_forwards"] < baseline.stats["target_forwards"]
    assert speculative.stats["draft_forwards"] == 0


# --- the draft model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def draft_model():
    return make_tiny_llama(seed=51, vocab_size=40, layers=1)


def propose(drafter, context, count, sampling, generator):
    """drafter.propose as the engine calls it (under inference mode), for a batch of one row:
    returns its drafts (host ints) and their distributions [drafts, vocab] (or None)."""
    with torch.inference_mode():
        proposal = drafter.propose([context], [count], sampling, generator)
    tokens = proposal.row(0)
    probs = proposal.probs[0, : len(tokens)] if proposal.probs is not None else None
    return SimpleNamespace(tokens=tokens, probs=probs)


def fresh_proposal(model, context, count):
    drafter = ModelDraft(model, 40)
    drafter.reset(CPU)
    return propose(drafter, context, count, GREEDY, make_generator(CPU, 0)).tokens


def greedy_continuation(model, context, count):
    with torch.inference_mode():
        out = model.generate(torch.tensor([context]), attention_mask=torch.ones(1, len(context), dtype=torch.long),
                             max_new_tokens=count, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(context):].tolist()


def test_model_draft_greedy_proposal_is_the_draft_models_greedy_continuation(draft_model):
    context = [1, 2, 3, 4, 5]
    assert fresh_proposal(draft_model, context, 6) == greedy_continuation(draft_model, context, 6)


def test_model_draft_after_a_rejection_proposes_what_a_fresh_drafter_would(draft_model):
    """The drafter keeps its cache across steps and rolls back what the target rejected."""
    drafter = ModelDraft(draft_model, 40)
    drafter.reset(CPU)
    generator = make_generator(CPU, 0)
    context = [1, 2, 3, 4, 5]
    first = propose(drafter, context, 4, GREEDY, generator).tokens
    # The target accepted the first two drafts and corrected the third with another token.
    correction = (first[2] + 1) % 40
    context = context + first[:2] + [correction]
    second = propose(drafter, context, 4, GREEDY, generator).tokens
    assert second == fresh_proposal(draft_model, context, 4)
    # Then the target accepts everything plus a bonus token.
    context = context + second + [7]
    assert propose(drafter, context, 3, GREEDY, generator).tokens == fresh_proposal(draft_model, context, 3)


def test_model_draft_on_a_context_that_diverges_early_proposes_what_a_fresh_drafter_would(stories):
    """The cache is rolled back to the longest prefix still shared with the context, wherever
    the divergence is, not only at the end (stories260K: a model that reads its context)."""
    engine, tokenizer = stories
    model = engine.target
    drafter = ModelDraft(model, 512)
    drafter.reset(CPU)
    generator = make_generator(CPU, 0)
    propose(drafter, tokenizer("Once upon a time, there was a little girl")["input_ids"], 4, GREEDY, generator)
    diverged = tokenizer("Once upon a big tree, a bird")["input_ids"]
    fresh = ModelDraft(model, 512)
    fresh.reset(CPU)
    expected = propose(fresh, diverged, 4, GREEDY, make_generator(CPU, 0)).tokens
    assert propose(drafter, diverged, 4, GREEDY, generator).tokens == expected


def test_model_draft_sampling_proposal_reports_its_distribution(draft_model):
    drafter = ModelDraft(draft_model, 40)
    drafter.reset(CPU)
    proposal = propose(drafter, [1, 2, 3], 3, SamplingParams(temperature=0.9, top_k=5), make_generator(CPU, 0))
    assert len(proposal.tokens) == 3 and proposal.probs.shape == (3, 40)
    torch.testing.assert_close(proposal.probs.sum(-1), torch.ones(3))
    assert ((proposal.probs > 0).sum(-1) <= 5).all()  # the same top-k warp as the target
    for row, token in zip(proposal.probs, proposal.tokens):
        assert row[token] > 0


def test_model_draft_counts_one_forward_per_proposed_token(draft_model):
    drafter = ModelDraft(draft_model, 40)
    drafter.reset(CPU)
    propose(drafter, [1, 2, 3, 4], 5, GREEDY, make_generator(CPU, 0))
    assert drafter.forwards == 5


def test_adaptive_drafter_stops_when_its_confidence_drops(draft_model):
    # A threshold no probability of a random model reaches: every step stops after one token.
    drafter = ModelDraft(draft_model, 40, DraftLengthPolicy("adaptive", confidence_threshold=0.999))
    drafter.reset(CPU)
    assert len(propose(drafter, [1, 2, 3], 6, GREEDY, make_generator(CPU, 0)).tokens) == 1
    patient = ModelDraft(draft_model, 40, DraftLengthPolicy("adaptive", confidence_threshold=0.0))
    patient.reset(CPU)
    assert len(propose(patient, [1, 2, 3], 6, GREEDY, make_generator(CPU, 0)).tokens) == 6


def test_draft_with_a_narrower_vocabulary_never_proposes_missing_ids():
    narrow = make_tiny_llama(seed=52, vocab_size=30, layers=1)
    drafter = ModelDraft(narrow, 40)
    drafter.reset(CPU)
    proposal = propose(drafter, [1, 2, 3], 8, SamplingParams(temperature=2.0), make_generator(CPU, 0))
    assert proposal.probs.shape == (8, 40)
    assert (proposal.probs[:, 30:] == 0).all() and all(t < 30 for t in proposal.tokens)


def test_draft_with_a_narrower_vocabulary_is_lossless_in_greedy_mode():
    target = make_tiny_llama(seed=53, vocab_size=40, layers=1)
    narrow = copy.deepcopy(target)
    with torch.no_grad():  # same model with its head trimmed to the first 30 ids
        narrow.lm_head.weight = torch.nn.Parameter(target.lm_head.weight[:30].clone())
    narrow.config.vocab_size = 30
    engine = Engine(target, IdTokenizer(40), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=20, sampling=GREEDY, gamma=4, seed=0)
    result = engine.generate([1, 2, 3, 4], config, ModelDraft(narrow, 40))
    assert result.token_ids == greedy_continuation(target, [1, 2, 3, 4], 20)


# --- draft-length schedules ------------------------------------------------------------------------


def test_constant_schedule_always_proposes_gamma():
    policy = DraftLengthPolicy("constant")
    for proposed, accepted in [(4, 4), (4, 0), (4, 2)]:
        assert policy.length(4) == 4
        policy.observe(proposed, accepted)
    assert policy.length(4) == 4


def test_adaptive_schedule_grows_by_two_after_full_acceptance_and_shrinks_by_one_after_a_rejection():
    policy = DraftLengthPolicy("adaptive", max_gamma=9)
    assert policy.length(4) == 4
    policy.observe(4, 4)
    assert policy.length(4) == 6
    policy.observe(6, 6)
    assert policy.length(4) == 8
    policy.observe(8, 8)
    assert policy.length(4) == 9  # capped at max_gamma
    policy.observe(9, 3)
    assert policy.length(4) == 8
    for _ in range(20):
        policy.observe(policy.length(4), 0)
    assert policy.length(4) == 1  # never below 1
    policy.observe(0, 0)  # a step without drafts changes nothing
    assert policy.length(4) == 1
    policy.reset()
    assert policy.length(3) == 3


def test_unknown_schedule_raises_usage_error():
    with pytest.raises(UsageError):
        DraftLengthPolicy("sometimes")
