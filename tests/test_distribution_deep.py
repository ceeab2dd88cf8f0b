"""Speculative sampling stays exact deep into a draft run and while the adaptive schedule grows.

The check of tests/test_distribution.py (exact distribution of every continuation, chi-square,
ALPHA = 1e-3, fixed seeds), with 6 new tokens and a draft close to the target, so that steps
reach draft positions 3 to 5 and both accept and reject there, and with the adaptive schedule
starting at 1 draft and growing (+2 per fully accepted step) within one generation (6 tokens
leave room for 1, then 2 of the 3 drafts it grows to; more tokens would make the exact
distribution too large to enumerate).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft
from specdec.engine import Engine, GenerationConfig
from specdec.engine.sampling import SamplingParams
from test_distribution import ALPHA, TableLM, chi_square, exact_distribution, llama_table, total_variation

VOCAB = 8
NEW_TOKENS = 6
PROMPT = [5, 2, 7, 0, 3, 6, 1, 4]
DRAWS = 2000
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    target = make_tiny_llama(seed=11, vocab_size=VOCAB, layers=1, hidden=16, temperature_scale=12.0)
    draft = make_tiny_llama(seed=11, vocab_size=VOCAB, layers=1, hidden=16, temperature_scale=12.0)
    with torch.no_grad():  # close to the target: long accepted runs, with some rejections
        for parameter in draft.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(5)) * 0.02)
    depth = NEW_TOKENS - 1
    return {"target": target, "target_table": llama_table(target, PROMPT, depth),
            "draft": draft, "draft_table": llama_table(draft, PROMPT, depth)}


@pytest.mark.parametrize("schedule, gamma", [("constant", 5), ("adaptive", 1)])
def test_deep_draft_positions_and_a_growing_schedule_keep_the_targets_distribution(models, schedule, gamma):
    engine = Engine(TableLM(models["target"], dict(models["target_table"])), IdTokenizer(VOCAB), torch.device("cpu"),
                    eos_token_ids=set())
    drafter = ModelDraft(TableLM(models["draft"], dict(models["draft_table"])), VOCAB,
                         DraftLengthPolicy(schedule, 0.0), prepack=False)
    sampling = SamplingParams(temperature=1.0)
    counts: Counter = Counter()
    reached = Counter()
    accepted_deep = rejected_deep = 0
    lengths: Counter = Counter()
    for seed in range(DRAWS):
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, sampling=sampling, gamma=gamma, seed=seed)
        stats = (result := engine.generate(PROMPT, config, drafter)).stats
        counts[tuple(result.token_ids)] += 1
        raw = stats["accept_at_counts"]
        for k, (r, a) in enumerate(zip(raw["reached"], raw["accepted"]), start=1):
            reached[k] += r
            if k >= 3:
                accepted_deep += a
                rejected_deep += r - a
        lengths.update({int(g): n for g, n in stats["proposal_lengths"].items()})
    # The check must have exercised what it claims to.
    if schedule == "constant":
        assert accepted_deep > 50 and rejected_deep > 20, (accepted_deep, rejected_deep, dict(reached))
    else:  # 1 draft, then 3 after a fully accepted step (cut to 2 by the 6-token budget)
        assert max(lengths) > gamma, f"the schedule never grew: {dict(lengths)}"
    exact = exact_distribution(models["target_table"], PROMPT, sampling, NEW_TOKENS)
    statistic, dof, p_value = chi_square(counts, exact, DRAWS)
    assert p_value > ALPHA, (f"chi2={statistic:.1f} dof={dof} p={p_value:.2e} "
                             f"TV={total_variation(counts, exact, DRAWS):.3f} lengths={dict(lengths)}")
