"""Per-generation statistics, under the names and definitions of ../shared/docs/metrics.md.

The counts are collected where each decision is made (the verification step), not
reconstructed afterwards.
"""

from __future__ import annotations


class StepStats:
    """Counters of the verification steps of one generation."""

    def __init__(self) -> None:
        self.steps = 0
        self.proposed = 0
        self.accepted = 0
        self.rejections = 0
        self.tokens_from_steps = 0
        # reached[k-1]: steps whose draft reached position k (k-1 accepted before it and a
        # k-th draft proposed); accepted_at[k-1]: of those, steps that accepted position k.
        self.reached: list[int] = []
        self.accepted_at: list[int] = []

    def record(self, proposed: int, accepted: int, tokens_kept: int) -> None:
        """One verification step: ``proposed`` drafts, ``accepted`` of them, and
        ``tokens_kept`` new tokens it produced after stopping rules (accepted + 1 usually)."""
        self.steps += 1
        self.proposed += proposed
        self.accepted += accepted
        self.tokens_from_steps += tokens_kept
        if accepted < proposed:
            self.rejections += 1
        while len(self.reached) < proposed:
            self.reached.append(0)
            self.accepted_at.append(0)
        for position in range(min(accepted + 1, proposed)):
            self.reached[position] += 1
        for position in range(accepted):
            self.accepted_at[position] += 1

    def summary(self) -> dict:
        """Acceptance figures: draft_acceptance_rate, alpha, tau, accept_at, accept_upto."""
        accept_at = [a / r if r else None for a, r in zip(self.accepted_at, self.reached)]
        accept_upto = [a / self.steps for a in self.accepted_at] if self.steps else []
        return {
            "steps": self.steps,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "rejections": self.rejections,
            "draft_acceptance_rate": ratio(self.accepted, self.proposed),
            "alpha": ratio(self.accepted, self.accepted + self.rejections),
            "tau": ratio(self.tokens_from_steps, self.steps),
            "accept_at": accept_at,
            "accept_upto": accept_upto,
        }


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None (JSON null) when the denominator is 0 or missing."""
    if not denominator:
        return None
    return numerator / denominator


def latency_summary(started: float, first_token_at: float, finished: float, new_tokens: int) -> dict:
    """ttft_s, e2e_s, tpot_s, tokens_per_s from three clock readings (seconds)."""
    ttft = first_token_at - started
    e2e = finished - started
    return {
        "ttft_s": ttft,
        "e2e_s": e2e,
        "tpot_s": (e2e - ttft) / (new_tokens - 1) if new_tokens > 1 else None,
        "tokens_per_s": ratio(new_tokens, e2e),
    }
