"""Per-generation statistics, under the names and definitions of ../shared/docs/metrics.md.

The counts are collected where each decision is made (the verification step), not
reconstructed afterwards.
"""

from __future__ import annotations


class StepStats:
    """Counters of the verification steps of one generation (one row of a batch)."""

    def __init__(self) -> None:
        self.steps = 0
        self.proposed = 0
        self.accepted = 0
        self.accepted_kept = 0
        self.rejections = 0
        self.tokens_from_steps = 0
        # reached[k-1]: steps whose draft reached position k (k-1 accepted before it and a
        # k-th draft proposed); accepted_at[k-1]: of those, steps that accepted position k.
        self.reached: list[int] = []
        self.accepted_at: list[int] = []
        # proposal_lengths[g]: steps that proposed g drafts (the adaptive schedule varies g).
        self.proposal_lengths: dict[int, int] = {}

    def record(self, proposed: int, accepted: int, tokens_kept: int) -> None:
        """One verification step: ``proposed`` drafts, ``accepted`` of them by the verifier,
        and ``tokens_kept`` new tokens it produced after the stopping rules (accepted + 1
        unless EOS, a stop string or the token budget cut the step short)."""
        self.steps += 1
        self.proposed += proposed
        self.accepted += accepted
        # Drafts kept in the output: the step's tokens minus the correction/bonus token when
        # that one was kept too.
        self.accepted_kept += min(accepted, tokens_kept)
        self.tokens_from_steps += tokens_kept
        self.proposal_lengths[proposed] = self.proposal_lengths.get(proposed, 0) + 1
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
        """Acceptance figures (names of ../shared/docs/metrics.md).

        ``accepted`` counts the verifier's decisions (every accepted draft is evidence for
        ``alpha``, also one after an end-of-sequence token); ``accepted_kept`` counts those
        that reached the output, and ``tau`` counts output tokens, so a step cut short by a
        stop does not inflate it. ``accept_at_counts`` carries the raw counts, so runs pool
        them exactly; ``proposal_lengths`` is the histogram of drafts per step.
        """
        accept_at = [a / r if r else None for a, r in zip(self.accepted_at, self.reached)]
        accept_upto = [a / self.steps for a in self.accepted_at] if self.steps else []
        return {
            "steps": self.steps,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "accepted_kept": self.accepted_kept,
            "rejections": self.rejections,
            "draft_acceptance_rate": ratio(self.accepted, self.proposed),
            "alpha": ratio(self.accepted, self.accepted + self.rejections),
            "tau": ratio(self.tokens_from_steps, self.steps),
            "accept_at": accept_at,
            "accept_upto": accept_upto,
            "accept_at_counts": {"reached": list(self.reached), "accepted": list(self.accepted_at)},
            "proposal_lengths": {str(k): v for k, v in sorted(self.proposal_lengths.items())},
        }


def _length_histogram(lengths: dict) -> dict[int, int]:
    return {int(k): int(v) for k, v in (lengths or {}).items() if int(v) > 0}


def expected_tau_from_lengths(alpha: float | None, proposal_lengths: dict) -> float | None:
    """Expected new tokens per step, ``E_g[(1 - alpha**(g+1)) / (1 - alpha)]`` over the steps'
    draft lengths g (Leviathan et al. eq. 1 per step, averaged over the histogram
    ``proposal_lengths`` {g: steps}); for a constant gamma it is the textbook figure."""
    histogram = _length_histogram(proposal_lengths)
    steps = sum(histogram.values())
    if alpha is None or not steps:
        return None
    per_length = {g: (g + 1.0) if alpha >= 1.0 else (1.0 - alpha ** (g + 1)) / (1.0 - alpha) for g in histogram}
    return sum(per_length[g] * n for g, n in histogram.items()) / steps


def predicted_speedup_from_lengths(alpha: float | None, c: float | None, proposal_lengths: dict) -> float | None:
    """Leviathan et al. Theorem 3.8 over the draft lengths actually used: expected tokens per
    step over expected cost per step in target forwards, ``E[tokens] / E[g * c + 1]``."""
    tau = expected_tau_from_lengths(alpha, proposal_lengths)
    histogram = _length_histogram(proposal_lengths)
    if tau is None or c is None:
        return None
    steps = sum(histogram.values())
    cost = sum((g * c + 1.0) * n for g, n in histogram.items()) / steps
    return tau / cost


def pool_accept_at(counts: list[dict]) -> list[float | None]:
    """``accept_at`` over several generations from their raw ``accept_at_counts`` (summed
    counts, not an average of ratios)."""
    reached: list[int] = []
    accepted: list[int] = []
    for entry in counts:
        if not entry:
            continue
        for k, (r, a) in enumerate(zip(entry["reached"], entry["accepted"])):
            if k == len(reached):
                reached.append(0)
                accepted.append(0)
            reached[k] += r
            accepted[k] += a
    return [a / r if r else None for a, r in zip(accepted, reached)]


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
