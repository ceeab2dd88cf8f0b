"""The verifier: which draft tokens the target accepts, and the token that follows them.

Two rules, both lossless:

- greedy (:func:`verify_greedy`): accept drafts while they equal the target's argmax; the
  next token is the target's argmax at the first mismatch (or after the last draft).
- sampling (:func:`verify_sampling`): speculative sampling of Leviathan et al. 2023
  ("Fast Inference from Transformers via Speculative Decoding", Algorithm 1) and Chen et al.
  2023 ("Accelerating LLM Decoding with Speculative Sampling", Algorithm 2): accept draft x
  with probability min(1, p(x)/q(x)); at the first rejection draw from norm(max(0, p - q));
  when every draft passes draw a bonus token from p.

Row i of the target's distributions is the target's prediction for draft position i
(0-based), i.e. computed at the position of the token just before that draft; row ``len(drafts)``
predicts the bonus token. Getting this alignment wrong is the classic off-by-one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.engine.sampling import sample_unnormalized


@dataclass(frozen=True)
class Verdict:
    """What one verification step decided.

    accepted: how many leading draft tokens the target accepted (0..len(drafts)).
    next_token: the token that follows the accepted drafts: the target's correction at the
        first rejected position, or the bonus token when every draft was accepted.
    """

    accepted: int
    next_token: int


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """Greedy verification of one row (see :func:`verify_greedy_batch`).

    draft_tokens: LongTensor [g] of proposed tokens.
    target_logits: [g + 1, vocab], row i scored at the position before draft i.
    """
    lengths = torch.tensor([draft_tokens.shape[0]], device=target_logits.device)
    accepted, next_token = verify_greedy_batch(draft_tokens.unsqueeze(0), lengths, target_logits.unsqueeze(0))
    return Verdict(accepted=int(accepted[0]), next_token=int(next_token[0]))


def verify_sampling(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator,
) -> Verdict:
    """Lossless speculative sampling of one row (see :func:`verify_sampling_batch`).

    draft_tokens: LongTensor [g].
    draft_probs: [g, vocab], the draft's warped distribution q at each draft position, or
        None when the drafter is deterministic (n-gram lookup).
    target_probs: [g + 1, vocab], the target's warped distribution p (same warping as q).
    """
    lengths = torch.tensor([draft_tokens.shape[0]], device=target_probs.device)
    probs = draft_probs.unsqueeze(0) if draft_probs is not None else None
    accepted, next_token = verify_sampling_batch(draft_tokens.unsqueeze(0), lengths, probs, target_probs.unsqueeze(0), generator)
    return Verdict(accepted=int(accepted[0]), next_token=int(next_token[0]))


def verify_greedy_batch(draft_tokens: torch.Tensor, draft_lengths: torch.Tensor, target_logits: torch.Tensor):
    """Greedy verification of a batch, on the device (no host sync).

    draft_tokens: LongTensor [batch, g] (row b's drafts are its first ``draft_lengths[b]``;
        the rest is padding and never accepted).
    draft_lengths: LongTensor [batch].
    target_logits: [batch, g + 1, vocab], column i scored at the position before draft i.
    Returns (accepted [batch], next_token [batch]): the leading run of drafts equal to the
    target's argmax, and the target's argmax right after it.
    """
    choice = target_logits.argmax(dim=-1)  # [batch, g + 1]
    width = draft_tokens.shape[1]
    in_range = torch.arange(width, device=choice.device).unsqueeze(0) < draft_lengths.unsqueeze(1)
    matches = (choice[:, :width] == draft_tokens) & in_range
    # Leading run of matches: cumprod is 1 until the first mismatch.
    accepted = matches.long().cumprod(dim=1).sum(dim=1)
    next_token = choice.gather(1, accepted.unsqueeze(1)).squeeze(1)
    return accepted, next_token


def verify_sampling_batch(
    draft_tokens: torch.Tensor,
    draft_lengths: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator,
):
    """Lossless speculative sampling (Leviathan et al. 2023, Algorithm 1) of a batch, on the
    device (no host sync).

    draft_tokens: LongTensor [batch, g]; row b's drafts are its first ``draft_lengths[b]``.
    draft_lengths: LongTensor [batch].
    draft_probs: [batch, g, vocab], the draft's warped q at each draft position, or None when
        the drafter is deterministic (n-gram lookup): q is then one-hot at the proposed token,
        so acceptance is p(x) and the residual is p with x removed.
    target_probs: [batch, g + 1, vocab], the target's warped p (same warping as q).
    generator: the generation's random generator (seeded once per generation).
    Returns (accepted [batch], next_token [batch]): draft x at position i is accepted with
    probability min(1, p(x)/q(x)) while all before it were; the next token is drawn from
    norm(max(0, p - q)) at the first rejection, or from p after the last draft (bonus).
    """
    batch, width = draft_tokens.shape
    device = target_probs.device
    if width:
        in_range = torch.arange(width, device=device).unsqueeze(0) < draft_lengths.unsqueeze(1)
        p_of_draft = target_probs[:, :width].gather(2, draft_tokens.unsqueeze(2)).squeeze(2)
        if draft_probs is not None:
            q_of_draft = draft_probs.gather(2, draft_tokens.unsqueeze(2)).squeeze(2)
        else:
            q_of_draft = torch.ones_like(p_of_draft)
        uniforms = torch.rand((batch, width), generator=generator, device=device)
        # Accept x when u < p(x)/q(x), written without a division so q(x) = 0 cannot blow up.
        passed = (uniforms * q_of_draft < p_of_draft) & in_range
        accepted = passed.long().cumprod(dim=1).sum(dim=1)
    else:
        accepted = torch.zeros(batch, dtype=torch.long, device=device)
    vocab = target_probs.shape[-1]
    p_row = target_probs.gather(1, accepted.view(batch, 1, 1).expand(batch, 1, vocab)).squeeze(1)
    rejected = (accepted < draft_lengths).unsqueeze(1)  # False: every draft passed, draw the bonus from p
    if width:
        at = accepted.clamp(max=width - 1).unsqueeze(1)
        if draft_probs is not None:
            q_row = draft_probs.gather(1, at.unsqueeze(2).expand(batch, 1, vocab)).squeeze(1)
        else:
            q_row = torch.zeros_like(p_row).scatter_(1, draft_tokens.gather(1, at), 1.0)
        residual = torch.where(rejected, (p_row - q_row).clamp_min(0.0), p_row)
    else:
        residual = p_row
    # A rejection implies p(x) < q(x), so some mass is left; guard against rounding anyway.
    total = residual.sum(dim=1, keepdim=True)
    residual = torch.where(torch.isfinite(total) & (total > 0), residual, p_row)
    return accepted, sample_unnormalized(residual, generator)
