"""Statistics follow ../shared/docs/metrics.md: every metric is present under its name, and
the figures agree with their definitions (new_tokens, target_forwards = steps + 1,
tau = tokens produced by steps / steps, alpha = accepted / (accepted + rejections),
draft_acceptance_rate = accepted / proposed, conditional accept_at and unconditional
accept_upto per draft position, c = t_draft / t_target, tpot_s, tokens_per_s). Timings are
only checked for consistency with each other, never for their values.

Also seeds: the same seed gives the same sampled output, different or absent seeds give
different outputs, and the seed used is reported in ``stats["seed"]`` and replays the run."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.engine.sampling import GREEDY, SamplingParams
from specdec.engine.stats import StepStats, latency_summary, ratio

CPU = torch.device("cpu")
VOCAB = 48
PROMPT = [3, 17, 42, 8, 3, 17, 42, 8, 3, 17]

METRICS = [
    "new_tokens", "target_forwards", "draft_forwards", "steps", "proposed", "accepted", "rejections",
    "draft_acceptance_rate", "alpha", "tau", "accept_at", "accept_upto", "t_target", "t_draft", "c",
    "ttft_s", "e2e_s", "tpot_s", "tokens_per_s",
]


pytestmark = pytest.mark.usefixtures("one_thread")


# --- StepStats on hand-made steps --------------------------------------------------------------


def test_step_stats_on_a_hand_made_sequence_of_steps():
    stats = StepStats()
    stats.record(4, 4, 5)  # all 4 accepted + bonus
    stats.record(4, 1, 2)  # 1 accepted, rejected at position 2
    stats.record(4, 0, 1)  # rejected at position 1
    stats.record(2, 2, 3)  # all 2 accepted + bonus
    summary = stats.summary()
    assert summary["steps"] == 4
    assert summary["proposed"] == 14
    assert summary["accepted"] == 7
    assert summary["rejections"] == 2
    assert summary["draft_acceptance_rate"] == pytest.approx(7 / 14)
    assert summary["alpha"] == pytest.approx(7 / 9)
    assert summary["tau"] == pytest.approx(11 / 4)
    # position k reached by: k=1 all 4 steps; k=2 steps 1, 2, 4; k=3 step 1; k=4 step 1
    # accepted at k:          k=1 steps 1, 2, 4; k=2 steps 1, 4; k=3 step 1; k=4 step 1
    assert summary["accept_at"] == pytest.approx([3 / 4, 2 / 3, 1 / 1, 1 / 1])
    assert summary["accept_upto"] == pytest.approx([3 / 4, 2 / 4, 1 / 4, 1 / 4])


def test_step_stats_counts_a_step_cut_short_by_a_stop_rule_by_tokens_kept():
    stats = StepStats()
    stats.record(4, 4, 2)  # EOS at the second accepted draft: 2 tokens kept
    assert stats.summary()["tau"] == 2
    assert stats.summary()["rejections"] == 0


def test_step_stats_of_autoregressive_steps_have_no_acceptance_figures():
    stats = StepStats()
    for _ in range(3):
        stats.record(0, 0, 1)
    summary = stats.summary()
    assert (summary["steps"], summary["proposed"], summary["accepted"], summary["rejections"]) == (3, 0, 0, 0)
    assert summary["draft_acceptance_rate"] is None and summary["alpha"] is None
    assert summary["tau"] == 1
    assert summary["accept_at"] == [] and summary["accept_upto"] == []


def test_step_stats_without_any_step_give_none_not_a_division_by_zero():
    summary = StepStats().summary()
    assert summary["steps"] == 0 and summary["tau"] is None and summary["alpha"] is None
    assert summary["accept_upto"] == []


def test_step_stats_position_not_reached_is_none_in_accept_at():
    stats = StepStats()
    stats.record(3, 0, 1)
    summary = stats.summary()
    assert summary["accept_at"] == [0.0, None, None]
    assert summary["accept_upto"] == [0.0, 0.0, 0.0]


def test_ratio_and_latency_summary():
    assert ratio(3, 4) == 0.75 and ratio(1, 0) is None and ratio(1, None) is None
    summary = latency_summary(started=10.0, first_token_at=10.5, finished=12.5, new_tokens=5)
    assert summary == pytest.approx({"ttft_s": 0.5, "e2e_s": 2.5, "tpot_s": 0.5, "tokens_per_s": 2.0})
    assert latency_summary(0.0, 1.0, 1.0, 1)["tpot_s"] is None


# --- stats of real generations ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    target = make_tiny_llama(seed=3, vocab_size=VOCAB, layers=2)
    return Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())


@pytest.fixture(scope="module")
def noisy_draft():
    """The target's weights plus noise: a draft accepted often but not always."""
    noisy = make_tiny_llama(seed=3, vocab_size=VOCAB, layers=2)  # the target's weights
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in noisy.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * 0.3 * parameter.std().nan_to_num(0.0))
    return noisy


def make_drafter(name, engine, noisy_draft):
    if name == "model":
        return ModelDraft(noisy_draft, VOCAB)
    if name == "ngram":
        return NgramDraft()
    if name == "same model":
        return ModelDraft(engine.target, VOCAB)
    return None


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(temperature=0.9)], ids=["greedy", "sampling"])
@pytest.mark.parametrize("drafter_name", ["model", "ngram", "same model"])
def test_speculative_stats_are_present_and_consistent(engine, noisy_draft, drafter_name, sampling):
    drafter = make_drafter(drafter_name, engine, noisy_draft)
    config = GenerationConfig(max_new_tokens=25, sampling=sampling, gamma=4, seed=5)
    result = engine.generate(PROMPT, config, drafter)
    s = result.stats
    missing = [name for name in METRICS if name not in s]
    assert not missing, f"metrics missing from the stats: {missing}"

    assert s["new_tokens"] == len(result.token_ids) == 25
    assert s["target_forwards"] == s["steps"] + 1  # prefill + one per verification step
    assert s["proposed"] >= s["accepted"] >= 0
    assert s["rejections"] <= s["steps"]
    assert s["tau"] * s["steps"] == pytest.approx(s["new_tokens"] - 1)  # tokens produced by steps
    if s["proposed"]:
        assert s["draft_acceptance_rate"] == pytest.approx(s["accepted"] / s["proposed"])
    if s["accepted"] + s["rejections"]:
        assert s["alpha"] == pytest.approx(s["accepted"] / (s["accepted"] + s["rejections"]))
    # Each accepted draft is counted once, at its position.
    assert sum(s["accept_upto"]) * s["steps"] == pytest.approx(s["accepted"])
    assert all(r is None or 0.0 <= r <= 1.0 for r in s["accept_at"])
    assert all(a >= b for a, b in zip(s["accept_upto"], s["accept_upto"][1:])), "accept_upto must not increase"
    for k, (at, upto) in enumerate(zip(s["accept_at"], s["accept_upto"])):
        if k == 0 and at is not None:
            # every step that proposed reached position 1
            assert at >= upto
    if drafter_name == "ngram":
        assert s["draft_forwards"] == 0 and s["t_draft"] is None and s["c"] is None
    else:
        assert s["draft_forwards"] >= s["proposed"] > 0  # a draft model makes one token per forward
        assert s["t_draft"] > 0 and s["t_target"] > 0
        assert s["c"] == pytest.approx(s["t_draft"] / s["t_target"])
    if drafter_name == "same model" and sampling.greedy:
        assert s["accepted"] == s["proposed"] and s["rejections"] == 0 and s["alpha"] == 1.0
    _check_latencies(s)
    assert s["mode"] == "speculative" and s["drafter"] == drafter.name and s["gamma"] == 4
    assert s["seed"] == 5 and s["prompt_tokens"] == len(PROMPT)


def test_noisy_model_draft_has_both_acceptances_and_rejections(engine, noisy_draft):
    """Makes sure the consistency test above met a generation with partial acceptance."""
    config = GenerationConfig(max_new_tokens=25, sampling=GREEDY, gamma=4, seed=5)
    s = engine.generate(PROMPT, config, make_drafter("model", engine, noisy_draft)).stats
    assert s["accepted"] > 0 and s["rejections"] > 0 and 0 < s["alpha"] < 1


def test_autoregressive_stats_are_present_and_consistent(engine):
    config = GenerationConfig(max_new_tokens=12, sampling=GREEDY, seed=3)
    s = engine.generate(PROMPT, config, None).stats
    assert not [name for name in METRICS if name not in s]
    assert s["new_tokens"] == 12
    assert s["target_forwards"] == 12 and s["steps"] == 11
    assert s["draft_forwards"] == 0 and s["proposed"] == s["accepted"] == s["rejections"] == 0
    assert s["tau"] == 1
    assert s["alpha"] is None and s["draft_acceptance_rate"] is None and s["c"] is None
    assert s["mode"] == "autoregressive" and s["prompt_tokens"] == len(PROMPT)
    _check_latencies(s)


def test_single_token_generation_has_no_tpot(engine):
    s = engine.generate(PROMPT, GenerationConfig(max_new_tokens=1, sampling=GREEDY), None).stats
    assert s["new_tokens"] == 1 and s["tpot_s"] is None and s["steps"] == 0 and s["tau"] is None
    assert s["tokens_per_s"] == pytest.approx(1 / s["e2e_s"])


def _check_latencies(s: dict) -> None:
    assert 0 < s["ttft_s"] <= s["e2e_s"]
    assert s["tokens_per_s"] == pytest.approx(s["new_tokens"] / s["e2e_s"])  # prompt excluded
    assert s["tpot_s"] == pytest.approx((s["e2e_s"] - s["ttft_s"]) / (s["new_tokens"] - 1))
    assert math.isfinite(s["t_target"]) and s["t_target"] > 0


# --- seeds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("drafter_name", ["model", "ngram", None])
def test_same_seed_gives_the_same_sampled_output(engine, noisy_draft, drafter_name):
    drafter = make_drafter(drafter_name, engine, noisy_draft)
    config = GenerationConfig(max_new_tokens=20, sampling=SamplingParams(temperature=1.5), gamma=4, seed=1234)
    first = engine.generate(PROMPT, config, drafter)
    second = engine.generate(PROMPT, config, drafter)
    assert first.token_ids == second.token_ids
    assert first.stats["seed"] == second.stats["seed"] == 1234


@pytest.mark.parametrize("drafter_name", ["model", None])
def test_different_seeds_and_no_seed_give_different_sampled_outputs(engine, noisy_draft, drafter_name):
    """A random model's distribution is close to uniform over 48 ids, flatter still at
    temperature 3: two runs agreeing on 20 tokens (chance about 48**-20) means a broken seed."""
    drafter = make_drafter(drafter_name, engine, noisy_draft)
    sampling = SamplingParams(temperature=3.0)
    seeded = [
        engine.generate(PROMPT, GenerationConfig(max_new_tokens=20, sampling=sampling, gamma=4, seed=seed), drafter).token_ids
        for seed in (1, 2)
    ]
    assert seeded[0] != seeded[1]
    unseeded = [engine.generate(PROMPT, GenerationConfig(max_new_tokens=20, sampling=sampling, gamma=4), drafter) for _ in range(2)]
    assert unseeded[0].token_ids != unseeded[1].token_ids
    seeds = [r.stats["seed"] for r in unseeded]
    assert all(isinstance(seed, int) for seed in seeds) and seeds[0] != seeds[1]
    # The reported seed reproduces the run.
    replay = engine.generate(PROMPT, GenerationConfig(max_new_tokens=20, sampling=sampling, gamma=4, seed=seeds[0]), drafter)
    assert replay.token_ids == unseeded[0].token_ids


def test_tokens_within_one_generation_are_not_repeated_draws():
    """Re-seeding inside the loop would make every step draw the same uniforms; with a uniform
    target (all-zero head) the tokens of one generation must vary."""
    model = make_tiny_llama(seed=62, vocab_size=VOCAB, layers=1)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    engine = Engine(model, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=30, sampling=SamplingParams(temperature=1.0), gamma=4, seed=7)
    tokens = engine.generate(PROMPT, config, None).token_ids
    assert len(set(tokens)) > 10  # 30 uniform draws over 48 ids
