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

from .sampling import sample


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
    """Greedy verification.

    draft_tokens: LongTensor [g] of proposed tokens.
    target_logits: [g + 1, vocab], row i scored at the position before draft i.
    """
    target_choice = target_logits.argmax(dim=-1)
    num_drafts = draft_tokens.shape[0]
    matches = (target_choice[:num_drafts] == draft_tokens).int()
    # Leading run of matches: cumprod is 1 until the first mismatch.
    accepted = int(matches.cumprod(dim=0).sum()) if num_drafts else 0
    return Verdict(accepted=accepted, next_token=int(target_choice[accepted]))


def verify_sampling(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator,
) -> Verdict:
    """Lossless speculative sampling (Leviathan et al. 2023, Algorithm 1).

    draft_tokens: LongTensor [g].
    draft_probs: [g, vocab], the draft's warped distribution q at each draft position, or
        None when the drafter is deterministic (n-gram lookup): q is then one-hot at the
        proposed token, so acceptance is p(x) and the residual is p with x removed.
    target_probs: [g + 1, vocab], the target's warped distribution p (same warping as q).
    generator: the generation's random generator (seeded once per generation).
    """
    num_drafts = draft_tokens.shape[0]
    if num_drafts:
        positions = torch.arange(num_drafts, device=target_probs.device)
        p_of_draft = target_probs[positions, draft_tokens]
        q_of_draft = draft_probs[positions, draft_tokens] if draft_probs is not None else torch.ones_like(p_of_draft)
        uniforms = torch.rand(num_drafts, generator=generator, device=target_probs.device)
        # Accept x when u < p(x)/q(x), written without a division so q(x) = 0 cannot blow up.
        passed = (uniforms * q_of_draft < p_of_draft).int()
        accepted = int(passed.cumprod(dim=0).sum())
    else:
        accepted = 0
    if accepted == num_drafts:
        bonus = sample(target_probs[num_drafts : num_drafts + 1], generator)
        return Verdict(accepted=accepted, next_token=int(bonus))
    p_row = target_probs[accepted]
    if draft_probs is not None:
        residual = (p_row - draft_probs[accepted]).clamp_min(0.0)
    else:
        residual = p_row.clone()
        residual[draft_tokens[accepted]] = 0.0
    total = residual.sum()
    # A rejection implies p(x) < q(x), so some mass is left; guard against rounding anyway.
    if not torch.isfinite(total) or total <= 0:
        residual = p_row
    correction = sample(residual.unsqueeze(0) / residual.sum(), generator)
    return Verdict(accepted=accepted, next_token=int(correction))
