"""Greedy speculative decoding is lossless: token for token, it produces exactly what the
target model produces on its own with transformers' ``model.generate(do_sample=False)``.

Checked for every drafter (a different random model, a noisy copy of the target that is
accepted often but not always, the target itself so that whole runs are accepted, a draft
with a padded vocabulary, and n-gram prompt lookup), for gamma 1, 3/4 and 8, for the constant
and the adaptive draft-length schedule, on random tiny Llamas and on the real stories260K
(with drafts derived from it: its first 3 layers, and a random Llama on its 512-token
vocabulary). The engine's autoregressive baseline must equal transformers' generate too.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.models.loading import eos_token_ids
from specdec.engine.sampling import GREEDY

CPU = torch.device("cpu")
TINY_VOCAB = 64
# Repeats itself, so n-gram lookup has something to find.
TINY_PROMPT = [3, 17, 42, 8, 3, 17, 42, 8, 3, 17]
TINY_NEW_TOKENS = 30


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos_token_id=None) -> list[int]:
    """The target's own greedy continuation from transformers' generate (prompt excluded)."""
    input_ids = torch.tensor([prompt])
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=0,
        )
    return output[0, len(prompt) :].tolist()


def noisy_copy(model, seed: int, scale: float):
    """A copy of ``model`` with Gaussian noise on every weight: a draft that agrees often, not always."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * parameter.std().nan_to_num(0.0))
    return draft


def first_layers(model, count: int):
    """A copy of a Llama keeping only its first ``count`` decoder layers (same embeddings and head)."""
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:count]
    draft.config.num_hidden_layers = count
    return draft


# --- random tiny Llamas ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    target = make_tiny_llama(seed=1, vocab_size=TINY_VOCAB, layers=2)
    drafts = {
        "different random model": make_tiny_llama(seed=2, vocab_size=TINY_VOCAB, layers=1),
        "noisy copy of the target": noisy_copy(target, seed=3, scale=0.3),
        "the target itself": target,
    }
    reference = hf_greedy(target, TINY_PROMPT, TINY_NEW_TOKENS)
    return target, drafts, reference


def tiny_engine(target) -> Engine:
    return Engine(target, IdTokenizer(TINY_VOCAB), CPU, eos_token_ids=set())


@pytest.mark.parametrize("schedule", ["constant", "adaptive"])
@pytest.mark.parametrize("gamma", [1, 3, 8])
@pytest.mark.parametrize("draft_name", ["different random model", "noisy copy of the target", "the target itself"])
def test_greedy_model_draft_output_equals_target_generate_on_random_llamas(tiny, draft_name, gamma, schedule):
    target, drafts, reference = tiny
    policy = DraftLengthPolicy(schedule, 0.4)
    drafter = ModelDraft(drafts[draft_name], TINY_VOCAB, policy)
    config = GenerationConfig(max_new_tokens=TINY_NEW_TOKENS, sampling=GREEDY, gamma=gamma, seed=0)
    result = tiny_engine(target).generate(TINY_PROMPT, config, drafter)
    assert result.token_ids == reference
    if draft_name == "the target itself" and schedule == "constant":
        # Identical draft: every proposed token must be accepted.
        assert result.stats["accepted"] == result.stats["proposed"] > 0


def test_noisy_draft_is_both_accepted_and_rejected_so_rollback_is_exercised(tiny):
    target, drafts, reference = tiny
    config = GenerationConfig(max_new_tokens=TINY_NEW_TOKENS, sampling=GREEDY, gamma=4, seed=0)
    result = tiny_engine(target).generate(TINY_PROMPT, config, ModelDraft(drafts["noisy copy of the target"], TINY_VOCAB))
    assert result.token_ids == reference
    assert result.stats["accepted"] > 0 and result.stats["rejections"] > 0, result.stats


@pytest.mark.parametrize("gamma", [1, 3, 8])
def test_greedy_ngram_draft_output_equals_target_generate_on_random_llamas(tiny, gamma):
    target, _, reference = tiny
    config = GenerationConfig(max_new_tokens=TINY_NEW_TOKENS, sampling=GREEDY, gamma=gamma, seed=0)
    result = tiny_engine(target).generate(TINY_PROMPT, config, NgramDraft())
    assert result.token_ids == reference


def test_autoregressive_baseline_equals_target_generate_on_random_llama(tiny):
    target, _, reference = tiny
    config = GenerationConfig(max_new_tokens=TINY_NEW_TOKENS, sampling=GREEDY, seed=0)
    result = tiny_engine(target).generate(TINY_PROMPT, config, drafter=None)
    assert result.token_ids == reference


def test_one_drafter_reused_across_generations_stays_lossless(tiny):
    """A drafter keeps a KV cache; a second generation (other prompt) must not see the first's."""
    target, drafts, _ = tiny
    engine = tiny_engine(target)
    drafter = ModelDraft(drafts["noisy copy of the target"], TINY_VOCAB, DraftLengthPolicy("adaptive", 0.4))
    for prompt in (TINY_PROMPT, [9, 1, 60, 33], TINY_PROMPT[:5]):
        config = GenerationConfig(max_new_tokens=20, sampling=GREEDY, gamma=4, seed=0)
        assert engine.generate(prompt, config, drafter).token_ids == hf_greedy(target, prompt, 20)


def test_draft_with_a_wider_padded_vocabulary_is_lossless(tiny):
    """Models of one family often pad the embedding matrix differently; ids beyond the target's
    vocabulary must simply never be proposed."""
    target, _, reference = tiny
    wide_draft = make_tiny_llama(seed=5, vocab_size=TINY_VOCAB + 16, layers=1)
    config = GenerationConfig(max_new_tokens=TINY_NEW_TOKENS, sampling=GREEDY, gamma=4, seed=0)
    result = tiny_engine(target).generate(TINY_PROMPT, config, ModelDraft(wide_draft, TINY_VOCAB))
    assert result.token_ids == reference


# --- the real stories260K ----------------------------------------------------------------

STORY_PROMPTS = {
    "short": "Once upon a time",
    "repetitive": (
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
        "Once upon a time, there was a little girl named Lily."
    ),
}
STORY_NEW_TOKENS = 40


@pytest.fixture(scope="module")
def stories(stories_path):
    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    target = AutoModelForCausalLM.from_pretrained(stories_path).eval()
    drafts = {
        "first 3 layers of stories260K": first_layers(target, 3),
        "random Llama on the 512-token vocabulary": make_tiny_llama(seed=7, vocab_size=512, layers=1, hidden=32),
        "stories260K itself": target,
    }
    engine = Engine(target, tokenizer, CPU, eos_token_ids(target, tokenizer))
    prompts = {name: tokenizer(text)["input_ids"] for name, text in STORY_PROMPTS.items()}
    references = {name: hf_greedy(target, ids, STORY_NEW_TOKENS, eos_token_id=sorted(engine.eos_token_ids)) for name, ids in prompts.items()}
    return engine, drafts, prompts, references


@pytest.mark.parametrize("schedule", ["constant", "adaptive"])
@pytest.mark.parametrize("gamma", [1, 8])
@pytest.mark.parametrize("draft_name", ["first 3 layers of stories260K", "stories260K itself"])
def test_greedy_model_draft_output_equals_target_generate_on_stories260k(stories, draft_name, gamma, schedule):
    engine, drafts, prompts, references = stories
    drafter = ModelDraft(drafts[draft_name], 512, DraftLengthPolicy(schedule, 0.4))
    for name, prompt in prompts.items():
        config = GenerationConfig(max_new_tokens=STORY_NEW_TOKENS, sampling=GREEDY, gamma=gamma, seed=0)
        result = engine.generate(prompt, config, drafter)
        assert result.token_ids == references[name], f"prompt {name!r}"


def test_greedy_random_draft_on_the_same_vocabulary_equals_target_generate_on_stories260k(stories):
    engine, drafts, prompts, references = stories
    drafter = ModelDraft(drafts["random Llama on the 512-token vocabulary"], 512)
    config = GenerationConfig(max_new_tokens=STORY_NEW_TOKENS, sampling=GREEDY, gamma=4, seed=0)
    assert engine.generate(prompts["short"], config, drafter).token_ids == references["short"]


def test_layer_truncated_stories_draft_is_both_accepted_and_rejected(stories):
    engine, drafts, prompts, references = stories
    config = GenerationConfig(max_new_tokens=STORY_NEW_TOKENS, sampling=GREEDY, gamma=4, seed=0)
    result = engine.generate(prompts["short"], config, ModelDraft(drafts["first 3 layers of stories260K"], 512))
    assert result.token_ids == references["short"]
    assert result.stats["accepted"] > 0 and result.stats["rejections"] > 0, result.stats


@pytest.mark.parametrize("gamma", [1, 4, 8])
def test_greedy_ngram_draft_output_equals_target_generate_on_stories260k(stories, gamma):
    engine, _, prompts, references = stories
    for name, prompt in prompts.items():
        config = GenerationConfig(max_new_tokens=STORY_NEW_TOKENS, sampling=GREEDY, gamma=gamma, seed=0)
        assert engine.generate(prompt, config, NgramDraft()).token_ids == references[name], f"prompt {name!r}"


def test_autoregressive_baseline_equals_target_generate_on_stories260k(stories):
    engine, _, prompts, references = stories
    for name, prompt in prompts.items():
        config = GenerationConfig(max_new_tokens=STORY_NEW_TOKENS, sampling=GREEDY, seed=0)
        assert engine.generate(prompt, config, drafter=None).token_ids == references[name], f"prompt {name!r}"


def test_greedy_speculative_output_through_an_end_of_sequence_equals_target_generate(stories):
    """With an end-of-sequence id the greedy story reaches (here the id of "."), speculative
    decoding and transformers' generate stop at the same place with the same tokens."""
    engine, drafts, prompts, _ = stories
    period = engine.tokenizer.convert_tokens_to_ids(".")
    prompt = prompts["short"]
    reference = hf_greedy(engine.target, prompt, STORY_NEW_TOKENS, eos_token_id=period)
    assert reference[-1] == period and len(reference) < STORY_NEW_TOKENS, "the reference never reached the end id"
    engine = Engine(engine.target, engine.tokenizer, CPU, eos_token_ids={period})
    config = GenerationConfig(max_new_tokens=STORY_NEW_TOKENS, sampling=GREEDY, gamma=8, seed=0)
    for drafter in (ModelDraft(drafts["first 3 layers of stories260K"], 512), ModelDraft(engine.target, 512), NgramDraft()):
        result = engine.generate(prompt, config, drafter)
        assert result.token_ids == reference, f"drafter {drafter.name}"
        assert result.stats["stop_reason"] == "eos"
