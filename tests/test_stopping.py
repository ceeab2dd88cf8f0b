"""Exact stopping: a generation never has more than ``max_new_tokens`` tokens, also when the
last step accepts a long run of drafts; an end-of-sequence token inside an accepted run of
drafts ends the generation right there; stop strings cut the text before the stop string
and end the generation; ``ignore_eos`` generates through EOS tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.models.loading import eos_token_ids
from specdec.engine.sampling import GREEDY, SamplingParams
from specdec.engine.stopping import StopChecker

CPU = torch.device("cpu")
VOCAB = 48
PROMPT = [3, 17, 42, 8, 3, 17, 42, 8, 3, 17]
GAMMA = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    return make_tiny_llama(seed=3, vocab_size=VOCAB, layers=2)


@pytest.fixture(scope="module")
def reference(target):
    """The target's greedy continuation of PROMPT (30 tokens), from its own generate."""
    with torch.inference_mode():
        output = target.generate(
            torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
            max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0,
        )
    return output[0, len(PROMPT) :].tolist()


def make_drafter(kind: str, target):
    if kind == "draft is the target (every draft accepted)":
        return ModelDraft(target, VOCAB)
    if kind == "ngram":
        return NgramDraft()
    if kind == "other random draft":
        return ModelDraft(make_tiny_llama(seed=42, vocab_size=VOCAB, layers=1), VOCAB)
    return None


DRAFTERS = ["draft is the target (every draft accepted)", "ngram", "other random draft", "autoregressive"]


# --- max_new_tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("drafter_kind", DRAFTERS)
@pytest.mark.parametrize("max_new_tokens", [1, 2, GAMMA, GAMMA + 1, GAMMA + 2, 3 * GAMMA + 1])
def test_greedy_generation_has_exactly_max_new_tokens(target, reference, drafter_kind, max_new_tokens):
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=GREEDY, gamma=GAMMA, seed=0)
    result = engine.generate(PROMPT, config, make_drafter(drafter_kind, target))
    assert result.token_ids == reference[:max_new_tokens]
    assert result.stats["new_tokens"] == max_new_tokens
    assert result.stats["stop_reason"] == "length"


@pytest.mark.parametrize("drafter_kind", DRAFTERS[:3])
def test_sampling_generation_never_exceeds_max_new_tokens(target, drafter_kind):
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    drafter = make_drafter(drafter_kind, target)
    for max_new_tokens in (1, 2, GAMMA + 1, 2 * GAMMA + 3):
        for seed in range(3):
            config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=SamplingParams(temperature=0.8), gamma=GAMMA, seed=seed)
            result = engine.generate(PROMPT, config, drafter)
            assert len(result.token_ids) == result.stats["new_tokens"] == max_new_tokens


def test_a_single_new_token_needs_only_the_prefill(target, reference):
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=1, sampling=GREEDY, gamma=GAMMA, seed=0)
    result = engine.generate(PROMPT, config, ModelDraft(target, VOCAB))
    assert result.token_ids == reference[:1]
    assert result.stats["target_forwards"] == 1 and result.stats["steps"] == 0 and result.stats["draft_forwards"] == 0


def test_last_step_with_a_fully_accepted_draft_run_is_cut_to_the_budget(target, reference):
    """gamma 8 with an identical draft would produce 9 tokens in one step; with 6 tokens left
    the step must still end at the budget."""
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=7, sampling=GREEDY, gamma=8, seed=0)
    result = engine.generate(PROMPT, config, ModelDraft(target, VOCAB))
    assert result.token_ids == reference[:7]
    assert result.stats["steps"] == 1  # prefill token + 5 accepted drafts + bonus


# --- end of sequence -------------------------------------------------------------------------


def first_new_token_at_or_after(tokens: list[int], position: int) -> tuple[int, int]:
    """(index, token) of the first token at index >= position that did not occur before it."""
    for index in range(position, len(tokens)):
        if tokens[index] not in tokens[:index]:
            return index, tokens[index]
    raise AssertionError(f"no fresh token after position {position} in {tokens}")


def test_eos_inside_an_accepted_run_of_drafts_stops_right_there(target, reference):
    index, eos = first_new_token_at_or_after(reference, 2)
    assert index <= 6, "pick a target whose EOS falls inside the first run of 8 drafts"
    engine = Engine(target, IdTokenizer(VOCAB, eos_token_id=eos), CPU, eos_token_ids={eos})
    config = GenerationConfig(max_new_tokens=30, sampling=GREEDY, gamma=8, seed=0)
    # The draft is the target: the first step proposes reference[1:9], all accepted, with the
    # EOS at ``index`` inside that run.
    result = engine.generate(PROMPT, config, ModelDraft(target, VOCAB))
    assert result.token_ids == reference[: index + 1]
    assert result.token_ids[-1] == eos and eos not in result.token_ids[:-1]
    assert result.stats["new_tokens"] == len(result.token_ids) == index + 1
    assert result.stats["stop_reason"] == "eos"
    assert result.stats["steps"] == 1
    assert result.stats["tau"] == index  # the step produced tokens 1 .. index


@pytest.mark.parametrize("drafter_kind", DRAFTERS)
def test_eos_stops_every_drafter_at_the_first_eos(target, reference, drafter_kind):
    index, eos = first_new_token_at_or_after(reference, 5)
    engine = Engine(target, IdTokenizer(VOCAB, eos_token_id=eos), CPU, eos_token_ids={eos})
    config = GenerationConfig(max_new_tokens=30, sampling=GREEDY, gamma=GAMMA, seed=0)
    result = engine.generate(PROMPT, config, make_drafter(drafter_kind, target))
    assert result.token_ids == reference[: index + 1]
    assert result.stats["new_tokens"] == index + 1
    # The EOS token is not part of the returned text (special tokens are skipped).
    assert result.text == IdTokenizer(VOCAB).decode(reference[:index])


def test_eos_as_the_very_first_token_stops_after_the_prefill(target, reference):
    eos = reference[0]
    engine = Engine(target, IdTokenizer(VOCAB, eos_token_id=eos), CPU, eos_token_ids={eos})
    config = GenerationConfig(max_new_tokens=30, sampling=GREEDY, gamma=GAMMA, seed=0)
    result = engine.generate(PROMPT, config, ModelDraft(target, VOCAB))
    assert result.token_ids == [eos]
    assert result.stats["target_forwards"] == 1 and result.stats["stop_reason"] == "eos"


def test_sampled_generations_never_continue_past_an_eos(target):
    eos = 5
    engine = Engine(target, IdTokenizer(VOCAB, eos_token_id=eos), CPU, eos_token_ids={eos})
    drafter = ModelDraft(make_tiny_llama(seed=43, vocab_size=VOCAB, layers=1), VOCAB)
    stopped_at_eos = 0
    for seed in range(12):
        config = GenerationConfig(max_new_tokens=25, sampling=SamplingParams(temperature=1.5), gamma=GAMMA, seed=seed)
        result = engine.generate(PROMPT, config, drafter)
        assert eos not in result.token_ids[:-1]
        stopped_at_eos += result.token_ids[-1] == eos
        assert result.stats["stop_reason"] == ("eos" if result.token_ids[-1] == eos else "length")
    assert stopped_at_eos > 0, "no generation hit the EOS: the test proved nothing"


def test_ignore_eos_generates_through_eos_tokens(target, reference):
    index, eos = first_new_token_at_or_after(reference, 2)
    engine = Engine(target, IdTokenizer(VOCAB, eos_token_id=eos), CPU, eos_token_ids={eos})
    config = GenerationConfig(max_new_tokens=20, sampling=GREEDY, gamma=GAMMA, seed=0, ignore_eos=True)
    for drafter in (ModelDraft(target, VOCAB), NgramDraft(), None):
        result = engine.generate(PROMPT, config, drafter)
        assert result.token_ids == reference[:20]
        assert eos in result.token_ids[:-1]
        assert result.stats["stop_reason"] == "length"


# --- stop strings (stories260K and its real tokenizer) -------------------------------------


@pytest.fixture(scope="module")
def stories(stories_path):
    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    model = AutoModelForCausalLM.from_pretrained(stories_path).eval()
    engine = Engine(model, tokenizer, CPU, eos_token_ids(model, tokenizer))
    prompt = tokenizer("Once upon a time")["input_ids"]
    full = engine.generate(prompt, GenerationConfig(max_new_tokens=30, sampling=GREEDY), None)
    # ", there was a little girl named Lily. She loved to play outside in the park. One day,"
    return engine, prompt, full


STORY_DRAFTERS = ["stories itself, gamma 8", "ngram", "autoregressive"]


def story_drafter(kind, engine):
    return {"stories itself, gamma 8": ModelDraft(engine.target, 512), "ngram": NgramDraft()}.get(kind)


@pytest.mark.parametrize("drafter_kind", STORY_DRAFTERS)
@pytest.mark.parametrize("stop", ["Lily", "girl named", "irl", "park."])
def test_stop_string_cuts_the_text_before_it_and_ends_the_generation(stories, drafter_kind, stop):
    engine, prompt, full = stories
    assert stop in full.text
    config = GenerationConfig(max_new_tokens=30, sampling=GREEDY, gamma=8, seed=0, stop_strings=(stop,))
    result = engine.generate(prompt, config, story_drafter(drafter_kind, engine))
    assert result.text == full.text[: full.text.index(stop)]
    assert result.stats["stop_reason"] == "stop_string"
    # Generation ended at the token that completed the stop string, not later.
    decode = engine.tokenizer.decode
    assert stop in decode(result.token_ids, skip_special_tokens=True)
    assert stop not in decode(result.token_ids[:-1], skip_special_tokens=True)
    assert result.token_ids == full.token_ids[: len(result.token_ids)]
    assert result.stats["new_tokens"] == len(result.token_ids) < 30


def test_the_earliest_of_several_stop_strings_wins(stories):
    engine, prompt, full = stories
    config = GenerationConfig(max_new_tokens=30, sampling=GREEDY, gamma=8, seed=0, stop_strings=("park", "Lily"))
    result = engine.generate(prompt, config, ModelDraft(engine.target, 512))
    assert result.text == full.text[: full.text.index("Lily")]


def test_a_stop_string_that_never_appears_changes_nothing(stories):
    engine, prompt, full = stories
    config = GenerationConfig(max_new_tokens=30, sampling=GREEDY, gamma=8, seed=0, stop_strings=("dragon",))
    result = engine.generate(prompt, config, ModelDraft(engine.target, 512))
    assert result.text == full.text and result.token_ids == full.token_ids
    assert result.stats["stop_reason"] == "length"


# --- StopChecker on its own ---------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["Lily", "girl named", "你好吗", "😀😀"], ids=["word", "two words", "three CJK characters", "two emoji"])
def test_stop_checker_finds_stop_strings_spelled_with_byte_fallback_tokens(stories, stop):
    """stories260K spells characters outside its vocabulary with one token per UTF-8 byte (3 per
    CJK character, 4 per emoji); a stop string must still stop the generation at the token
    that completes it."""
    tokenizer = stories[0].tokenizer
    tokens = tokenizer("Hi " + stop + " there", add_special_tokens=False)["input_ids"]
    completing = next(n for n in range(1, len(tokens) + 1) if stop in tokenizer.decode(tokens[:n]))
    checker = StopChecker(tokenizer, 100, set(), (stop,))
    stopped_after = next((n for n in range(1, len(tokens) + 1) if checker.should_stop(tokens[:n])), None)
    assert stopped_after == completing, f"{stop!r} spans {tokenizer.convert_ids_to_tokens(tokens)}"
    assert checker.stop_reason == "stop_string"
    assert checker.final_text(tokenizer.decode(tokens)) == "Hi "



def test_stop_checker_reports_each_reason():
    tokenizer = IdTokenizer(20, eos_token_id=2)
    assert StopChecker(tokenizer, 3, {2}).should_stop([5, 2])
    checker = StopChecker(tokenizer, 3, {2})
    assert not checker.should_stop([5]) and not checker.should_stop([5, 6]) and checker.should_stop([5, 6, 7])
    assert checker.stop_reason == "length"
    checker = StopChecker(tokenizer, 10, set(), stop_strings=("<7><8>",))
    assert not checker.should_stop([7]) and checker.should_stop([7, 8])
    assert checker.stop_reason == "stop_string"
    assert checker.final_text("<1><7><8><9>") == "<1>"


def test_stop_checker_ignores_empty_stop_strings():
    checker = StopChecker(IdTokenizer(20), 5, set(), stop_strings=("",))
    assert not checker.should_stop([1])
