"""The verifier, fed known distributions: greedy verification accepts exactly the leading run
of drafts equal to the target's argmax (row i checks draft i, row g gives the bonus), and
speculative sampling accepts draft x with probability min(1, p(x)/q(x)) and outputs tokens
whose marginal is exactly p (Leviathan et al. 2023, Theorem 1), for a sampling draft model
and for a deterministic (n-gram) draft.

Statistical tolerances: acceptance frequencies within 5 binomial standard deviations;
marginals by a chi-square test at significance 1e-3 (fixed seeds, so deterministic)."""

from __future__ import annotations

import pytest
import torch

from specdec.engine.sampling import make_generator
from specdec.engine.verify import Verdict, verify_greedy, verify_sampling

CPU = torch.device("cpu")
ALPHA = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def one_hot_logits(rows: list[int], vocab: int = 10) -> torch.Tensor:
    """Logits whose argmax in row i is rows[i]."""
    logits = torch.zeros(len(rows), vocab)
    for i, token in enumerate(rows):
        logits[i, token] = 5.0
    return logits


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    draws = float(counts.sum())
    expected = probs.double() * draws
    support = expected > 0
    assert counts[~support].sum() == 0, "a zero-probability token was drawn"
    statistic = float((((counts.double() - expected) ** 2)[support] / expected[support]).sum())
    dof = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)))


# --- greedy ----------------------------------------------------------------------------------


def test_greedy_accepts_every_matching_draft_and_takes_the_bonus_from_the_last_row():
    logits = one_hot_logits([4, 7, 1, 9])
    assert verify_greedy(torch.tensor([4, 7, 1]), logits) == Verdict(accepted=3, next_token=9)


def test_greedy_stops_at_the_first_mismatch_and_corrects_with_that_rows_argmax():
    logits = one_hot_logits([4, 7, 1, 9])
    assert verify_greedy(torch.tensor([4, 2, 1]), logits) == Verdict(accepted=1, next_token=7)
    assert verify_greedy(torch.tensor([3, 7, 1]), logits) == Verdict(accepted=0, next_token=4)


def test_greedy_does_not_accept_drafts_after_a_mismatch_even_if_they_match():
    logits = one_hot_logits([4, 7, 1, 9])
    assert verify_greedy(torch.tensor([4, 0, 1]), logits).accepted == 1


def test_greedy_row_i_verifies_draft_i_not_draft_i_plus_1():
    # Off-by-one trap: drafts equal to the argmax of the *next* row must be rejected.
    logits = one_hot_logits([5, 6, 7])
    assert verify_greedy(torch.tensor([6, 7]), logits) == Verdict(accepted=0, next_token=5)


def test_greedy_with_no_drafts_is_an_ordinary_decode_step():
    assert verify_greedy(torch.tensor([], dtype=torch.long), one_hot_logits([3])) == Verdict(0, 3)


# --- sampling: exact decisions -----------------------------------------------------------------


def test_sampling_accepts_every_draft_when_p_equals_q():
    probs = torch.softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), -1)
    generator = make_generator(CPU, 0)
    for _ in range(200):
        drafts = torch.multinomial(probs[:3], 1, generator=generator).squeeze(-1)
        assert verify_sampling(drafts, probs[:3], probs, generator).accepted == 3


def test_sampling_rejects_a_draft_the_target_cannot_produce_and_never_outputs_it():
    p = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.9, 0.1, 0.0, 0.0]])
    generator = make_generator(CPU, 0)
    for _ in range(200):
        verdict = verify_sampling(torch.tensor([0]), q, p, generator)
        assert verdict.accepted == 0 and verdict.next_token in (1, 2)


def test_sampling_bonus_comes_from_the_row_after_the_last_draft():
    # Row 0 and row 1 agree with q (accepted for sure); the bonus must come from row 2,
    # whose support {3} is disjoint from rows 0 and 1.
    p = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    q = p[:2].clone()
    verdict = verify_sampling(torch.tensor([0, 1]), q, p, make_generator(CPU, 0))
    assert verdict == Verdict(accepted=2, next_token=3)


def test_sampling_correction_comes_from_the_first_rejected_row():
    # Draft 1 is accepted surely (p = q), draft 2 is rejected surely (p(x) = 0); the correction
    # must follow row 1 of p (support {2}), not row 0 or row 2.
    p = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    q = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    verdict = verify_sampling(torch.tensor([0, 1]), q, p, make_generator(CPU, 0))
    assert verdict == Verdict(accepted=1, next_token=2)


def test_sampling_with_deterministic_drafts_accepts_while_p_is_one():
    p = torch.tensor([[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    verdict = verify_sampling(torch.tensor([1, 2]), None, p, make_generator(CPU, 0))
    assert verdict == Verdict(accepted=2, next_token=0)


def test_sampling_deterministic_draft_rejection_residual_excludes_the_draft():
    p = torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    generator = make_generator(CPU, 1)
    for _ in range(300):
        verdict = verify_sampling(torch.tensor([0]), None, p, generator)
        if verdict.accepted == 0:
            assert verdict.next_token == 1  # p minus the rejected draft 0 leaves only token 1


# --- sampling: statistics -------------------------------------------------------------------

P = torch.tensor([0.05, 0.30, 0.10, 0.25, 0.20, 0.10])
Q = torch.tensor([0.40, 0.05, 0.25, 0.05, 0.05, 0.20])
BONUS_ROW = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.5])


def test_acceptance_probability_is_min_1_p_over_q():
    generator = make_generator(CPU, 7)
    target = torch.stack([P, BONUS_ROW])
    draws = 2000
    for token in range(6):
        accepted = sum(verify_sampling(torch.tensor([token]), Q.unsqueeze(0), target, generator).accepted for _ in range(draws))
        expected = min(1.0, float(P[token] / Q[token]))
        sigma = max((expected * (1 - expected) / draws) ** 0.5, 1e-9)
        assert abs(accepted / draws - expected) <= 5 * sigma + 1e-9, f"token {token}: {accepted / draws} vs {expected}"


@pytest.mark.parametrize("drafter", ["sampled from q", "deterministic"])
def test_output_token_marginal_equals_the_target_distribution(drafter):
    """Draft x ~ q (or a fixed n-gram token), verify; the first output token (the accepted draft
    or the correction) must be distributed as p, not q."""
    generator = make_generator(CPU, 3)
    target = torch.stack([P, BONUS_ROW])
    counts = torch.zeros(6)
    draws = 6000
    for i in range(draws):
        if drafter == "sampled from q":
            draft = torch.multinomial(Q, 1, generator=generator)
            verdict = verify_sampling(draft, Q.unsqueeze(0), target, generator)
        else:
            draft = torch.tensor([i % 6])  # the n-gram proposal varies, q is one-hot at it
            verdict = verify_sampling(draft, None, target, generator)
        first = int(draft[0]) if verdict.accepted else verdict.next_token
        counts[first] += 1
    assert chi_square_p_value(counts, P) > ALPHA, counts / draws


def test_the_marginal_check_has_power_against_outputting_the_draft_distribution():
    """Negative control for the test above: draws from q fail the same check against p."""
    generator = make_generator(CPU, 3)
    counts = torch.bincount(torch.multinomial(Q, 6000, replacement=True, generator=generator), minlength=6).float()
    assert chi_square_p_value(counts, P) < ALPHA


def test_two_drafts_joint_output_equals_the_target_distribution():
    """With two drafts from q (same q at both positions) and p rows that differ, the pair of the
    first two output tokens, when the first draft is accepted, is distributed as p0 x p1."""
    p0, p1 = P, torch.tensor([0.30, 0.05, 0.05, 0.10, 0.40, 0.10])
    target = torch.stack([p0, p1, BONUS_ROW])
    q = torch.stack([Q, Q])
    generator = make_generator(CPU, 11)
    counts = torch.zeros(6, 6)
    draws = 8000
    for _ in range(draws):
        drafts = torch.multinomial(q, 1, generator=generator).squeeze(-1)
        verdict = verify_sampling(drafts, q, target, generator)
        if verdict.accepted == 0:
            # The step ends after the correction; the second token would come from a new step.
            # Complete it with a draw from p1, as an honest next step would produce.
            second = int(torch.multinomial(p1, 1, generator=generator))
            first = verdict.next_token
        else:
            first = int(drafts[0])
            second = int(drafts[1]) if verdict.accepted == 2 else verdict.next_token
        counts[first, second] += 1
    assert chi_square_p_value(counts.flatten(), torch.outer(p0, p1).flatten()) > ALPHA
