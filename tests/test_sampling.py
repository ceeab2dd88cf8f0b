"""Turning logits into the next token: temperature 0 is greedy (no division by zero),
bad sampling settings are refused with a UsageError, top-k / top-p keep exactly the right
tokens, and the per-generation random generator is reproducible."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.errors import UsageError
from specdec.engine.sampling import GREEDY, SamplingParams, make_generator, probabilities, sample, warp_logits

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def kept(logits: torch.Tensor, **params) -> set[int]:
    """The token ids a warp keeps (finite logits)."""
    warped = warp_logits(logits, SamplingParams(**params))
    return set(torch.nonzero(torch.isfinite(warped)).flatten().tolist())


# --- greedy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 1e-9])
def test_temperature_at_or_below_1e_minus_6_is_greedy(temperature):
    assert SamplingParams(temperature=temperature).greedy


@pytest.mark.parametrize("temperature", [1e-5, 0.5, 1.0, 2.0])
def test_positive_temperature_above_1e_minus_6_samples(temperature):
    assert not SamplingParams(temperature=temperature).greedy


@pytest.mark.parametrize("temperature", [0.0, 1e-7])
def test_engine_at_temperature_zero_decodes_the_argmax_without_nan(temperature):
    torch.manual_seed(0)
    model = make_tiny_llama(seed=31, vocab_size=32, layers=1)
    prompt = [1, 5, 9]
    with torch.inference_mode():
        reference = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, 3, dtype=torch.long),
            max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0,
        )[0, 3:].tolist()
    engine = Engine(model, IdTokenizer(32), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=12, sampling=SamplingParams(temperature=temperature), gamma=3)
    for drafter in (None, NgramDraft(), ModelDraft(make_tiny_llama(seed=32, vocab_size=32, layers=1), 32)):
        for seed in (0, 1):  # greedy ignores the seed
            config.seed = seed
            assert engine.generate(prompt, config, drafter).token_ids == reference


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=-0.1),
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(top_p=0.0),
        dict(top_p=-0.5),
        dict(top_p=1.5),
        dict(top_k=-1),
    ],
    ids=lambda params: ",".join(f"{key}={value}" for key, value in params.items()),
)
def test_invalid_sampling_settings_raise_usage_error(params):
    """Refused up front with a clear message, not deep inside a torch call later."""
    with pytest.raises(UsageError):
        SamplingParams(**params)


@pytest.mark.parametrize(
    "params",
    [dict(temperature=0.0), dict(top_p=1.0), dict(top_p=0.01), dict(top_k=0), dict(top_k=1)],
    ids=lambda params: ",".join(f"{key}={value}" for key, value in params.items()),
)
def test_boundary_sampling_settings_are_accepted(params):
    SamplingParams(**params)


# --- warping ---------------------------------------------------------------------------------

LOGITS = torch.tensor([1.0, 4.0, 2.0, 3.5, -1.0, 0.0, 3.0, 2.5])  # ranking: 1, 3, 6, 7, 2, 0, 5, 4


@pytest.mark.parametrize("k, expected", [(1, {1}), (3, {1, 3, 6}), (5, {1, 3, 6, 7, 2}), (8, set(range(8))), (0, set(range(8)))])
def test_top_k_keeps_the_k_most_likely_tokens(k, expected):
    assert kept(LOGITS, top_k=k) == expected


def test_top_p_keeps_the_smallest_set_of_most_likely_tokens_reaching_p():
    probs = torch.softmax(LOGITS, -1)
    order = torch.argsort(probs, descending=True).tolist()
    cumulative = torch.cumsum(probs[order], 0).tolist()
    for top_p in (0.2, 0.5, 0.7, 0.9, 0.99):
        # smallest prefix of the ranking whose mass reaches top_p
        size = next(i + 1 for i, c in enumerate(cumulative) if c >= top_p - 1e-7)
        assert kept(LOGITS, top_p=top_p) == set(order[:size]), f"top_p={top_p}"


def test_top_p_always_keeps_the_most_likely_token():
    assert kept(LOGITS, top_p=1e-4) == {1}


def test_top_p_applies_to_the_top_k_renormalized_distribution():
    # top-2 of [4.0, 3.5] renormalized: 0.622, 0.378; top_p 0.6 keeps only the first.
    assert kept(LOGITS, top_k=2, top_p=0.6) == {1}
    assert kept(LOGITS, top_k=2, top_p=0.7) == {1, 3}


def test_temperature_divides_the_logits():
    probs = probabilities(LOGITS, SamplingParams(temperature=0.5))
    torch.testing.assert_close(probs, torch.softmax(LOGITS / 0.5, -1))
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)


def test_probabilities_of_a_warped_batch_sum_to_one_and_are_zero_outside_the_kept_set():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.8, top_k=10, top_p=0.9)
    probs = probabilities(logits, params)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    assert ((probs > 0).sum(-1) <= 10).all()
    assert torch.equal(probs > 0, torch.isfinite(warp_logits(logits, params)))


def test_warp_logits_accepts_half_precision_and_returns_float32():
    warped = warp_logits(LOGITS.to(torch.bfloat16), SamplingParams(top_k=3))
    assert warped.dtype == torch.float32


# --- drawing -----------------------------------------------------------------------------------


def test_same_seed_gives_the_same_draws_and_another_seed_other_draws():
    probs = torch.full((1, 50), 1 / 50)
    first = [int(sample(probs, g)) for g in [make_generator(CPU, 123)] for _ in range(20)]
    again = [int(sample(probs, g)) for g in [make_generator(CPU, 123)] for _ in range(20)]
    other = [int(sample(probs, g)) for g in [make_generator(CPU, 124)] for _ in range(20)]
    assert first == again
    assert first != other  # 50**-20 chance of a collision


def test_sample_never_draws_a_zero_probability_token_and_follows_the_probabilities():
    probs = torch.tensor([[0.0, 0.7, 0.0, 0.3]])
    generator = make_generator(CPU, 0)
    draws = torch.tensor([int(sample(probs, generator)) for _ in range(2000)])
    assert set(draws.tolist()) <= {1, 3}
    share = float((draws == 1).float().mean())
    # binomial standard deviation sqrt(0.7 * 0.3 / 2000) = 0.0102; allow 5 sigma
    assert abs(share - 0.7) < 0.052


def test_sample_draws_one_token_per_row():
    probs = torch.eye(4)
    assert sample(probs, make_generator(CPU, 0)).tolist() == [0, 1, 2, 3]


def test_greedy_constant_is_greedy():
    assert GREEDY.greedy and GREEDY.temperature == 0.0
