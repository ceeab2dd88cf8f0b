"""Batched decoding is lossless per row.

Greedy: every row of a batch (prompts of different lengths, left-padded; drafts accepted in
ragged numbers per row; rows finishing at different times) is token for token the target's
batch-1 greedy output for that prompt, in float32, for the baseline, a draft model and n-gram
lookup, with the dynamic and the static cache.

Sampling: the same chi-square check as tests/test_distribution.py, on rows of batches: each
row's continuations follow the target's exact distribution (ALPHA = 1e-3, fixed seeds).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.engine.sampling import GREEDY, SamplingParams
from test_distribution import ALPHA, chi_square, exact_distribution, llama_table, total_variation

CPU = torch.device("cpu")
VOCAB = 64
PROMPTS = [
    [3, 7, 1, 9, 3, 7, 1],
    [12, 5],
    [40, 41, 42, 43, 40, 41, 42, 43, 40, 41, 42],
    [8, 8, 8, 8, 8],
]
pytestmark = pytest.mark.usefixtures("one_thread")


def hf_greedy(model, prompt, new_tokens):
    with torch.inference_mode():
        output = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    return output[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def target():
    return make_tiny_llama(seed=41, vocab_size=VOCAB, layers=2)


@pytest.fixture(scope="module")
def references(target):
    return [hf_greedy(target, p, 24) for p in PROMPTS]


def drafters(target):
    noisy = make_tiny_llama(seed=41, vocab_size=VOCAB, layers=2)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return {
        "none": lambda: None,
        "draft model": lambda: ModelDraft(make_tiny_llama(seed=42, vocab_size=VOCAB, layers=1), VOCAB),
        "noisy copy, adaptive": lambda: ModelDraft(noisy, VOCAB, DraftLengthPolicy("adaptive", 0.4)),
        "n-gram": lambda: NgramDraft(),
    }


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("drafter_name", ["none", "draft model", "noisy copy, adaptive", "n-gram"])
def test_every_row_of_a_greedy_batch_is_the_targets_batch_1_greedy_output(target, references, cache, drafter_name):
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set(), cache=cache)
    drafter = drafters(target)[drafter_name]()
    results = engine.generate_batch(PROMPTS, GenerationConfig(max_new_tokens=24, sampling=GREEDY, gamma=4), drafter)
    for row, (result, reference) in enumerate(zip(results, references)):
        assert result.token_ids == reference, f"row {row} differs from its batch-1 greedy output"
        assert result.stats["batch_size"] == len(PROMPTS)
    if drafter_name != "none":
        accepted = [r.stats["accepted"] for r in results]
        assert sum(accepted) > 0
        assert len(set(accepted)) > 1 or drafter_name == "n-gram"  # rows accept ragged amounts


def test_rows_that_stop_early_leave_and_the_rest_finish(target, references):
    """Row budgets differ through EOS: a row stops at its first EOS; the others go on."""
    eos = references[1][5]
    engine = Engine(target, IdTokenizer(VOCAB, eos_token_id=eos), CPU, eos_token_ids={eos})
    results = engine.generate_batch(PROMPTS, GenerationConfig(max_new_tokens=24, sampling=GREEDY, gamma=3),
                                    ModelDraft(make_tiny_llama(seed=42, vocab_size=VOCAB, layers=1), VOCAB))
    for result, reference in zip(results, references):
        expected = reference[: reference.index(eos) + 1] if eos in reference else reference
        assert result.token_ids == expected
    assert results[1].stats["stop_reason"] == "eos"
    assert results[1].stats["new_tokens"] == references[1].index(eos) + 1 <= 6
    assert max(r.stats["new_tokens"] for r in results) > 6  # other rows went on after it left


def test_batch_stats_report_each_row_and_the_batch_throughput(target):
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    results = engine.generate_batch(PROMPTS[:2], GenerationConfig(max_new_tokens=10, sampling=GREEDY, gamma=2), NgramDraft())
    for result in results:
        stats = result.stats
        assert stats["new_tokens"] == 10 and stats["batch_new_tokens"] == 20
        assert stats["batch_tokens_per_s"] > 0 and stats["e2e_s"] <= stats["batch_e2e_s"] + 1e-9
        assert sum(stats["proposal_lengths"].values()) == stats["steps"]


# --- sampling on a batch ------------------------------------------------------------------------

SMALL_VOCAB = 8
NEW_TOKENS = 4
SAMPLING_PROMPTS = [[5, 2, 7, 0, 3, 6, 1, 4, 5, 2], [1, 6, 3]]
DRAWS_PER_PROMPT = 1200
BATCH = 40  # rows per batch: 20 of each prompt, interleaved


@pytest.fixture(scope="module")
def sampling_models():
    target = make_tiny_llama(seed=11, vocab_size=SMALL_VOCAB, layers=1, hidden=16, temperature_scale=30.0)
    draft = make_tiny_llama(seed=12, vocab_size=SMALL_VOCAB, layers=1, hidden=16, temperature_scale=30.0)
    return target, draft


@pytest.mark.parametrize("drafter_kind", ["model", "ngram"])
def test_every_row_of_a_sampled_batch_has_the_targets_distribution(sampling_models, drafter_kind):
    target, draft = sampling_models
    engine = Engine(target, IdTokenizer(SMALL_VOCAB), CPU, eos_token_ids=set())
    sampling = SamplingParams(temperature=1.0, top_k=6)
    counts = [Counter(), Counter()]
    totals = Counter()
    batches = 2 * DRAWS_PER_PROMPT // BATCH
    for seed in range(batches):
        prompts = [SAMPLING_PROMPTS[i % 2] for i in range(BATCH)]
        drafter = ModelDraft(draft, SMALL_VOCAB) if drafter_kind == "model" else NgramDraft()
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, sampling=sampling, gamma=3, seed=seed)
        for row, result in enumerate(engine.generate_batch(prompts, config, drafter)):
            counts[row % 2][tuple(result.token_ids)] += 1
            totals["accepted"] += result.stats["accepted"]
            totals["rejections"] += result.stats["rejections"]
    assert totals["accepted"] > 0 and totals["rejections"] > 0, dict(totals)
    for prompt, observed in zip(SAMPLING_PROMPTS, counts):
        table = llama_table(target, prompt, NEW_TOKENS - 1)
        exact = exact_distribution(table, prompt, sampling)
        draws = sum(observed.values())
        statistic, dof, p_value = chi_square(observed, exact, draws)
        assert p_value > ALPHA, (f"prompt {prompt}: chi2={statistic:.1f} dof={dof} p={p_value:.2e} "
                                 f"TV={total_variation(observed, exact, draws):.3f}")


def test_api_batch_rows_equal_single_generations(stories_path):
    from specdec.main import SpeculativeDecoder

    decoder = SpeculativeDecoder(approx_model_name=str(stories_path), target_model_name=str(stories_path), gamma=3,
                                 max_tokens=16, device="cpu", temperature=0.0, dtype="float32")
    texts = ["Once upon a time", "The little dog ran to the park and", "Lily"]
    batch = decoder.generate_batch(texts)
    assert [r.token_ids for r in batch] == [decoder.generate(t).token_ids for t in texts]
    assert [r.text for r in decoder.generate_batch(texts, speculative=False)] == [r.text for r in batch]
