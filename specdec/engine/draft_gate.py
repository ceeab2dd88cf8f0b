"""Whether drafting pays, measured while decoding: the adaptive draft length's way down to 0.

The adaptive schedule's step rule (+2 after a fully accepted step, -1 after a rejection) tunes
the draft length from acceptance alone and never goes below 1. Where a drafting step costs
more than the tokens it adds (a draft that is slow next to the target, low acceptance, or a
batch so wide that a verification forward costs several plain ones), it would keep speculating
at a loss. The gate compares the two kinds of step on this machine, this batch and this
generation, by what they yield per second of wall time:

- drafting steps: tokens kept by the batch's live rows / step seconds, over a sliding window
  of the last ``window`` drafting steps of the generation (the first one, which also runs the
  draft's prefill, is not counted);
- plain steps (every row's draft length 0: one target forward of width 1, one token per live
  row): seconds per step, per number of rows in the runner, kept across generations of the
  same drafter. Without a sample for the current batch, the gate runs one plain step as a
  probe early in the generation (``probes`` counts them), then uses the median of the last
  ``window`` samples (the drafting rate is a mean over its window: neither side is given the
  luck of its fastest step).

When the drafting rate falls below the plain rate by more than ``margin``, the gate closes:
the next ``backoff`` steps draft nothing (the draft length is 0 and each is a plain decode
step, so decoding goes on at the autoregressive speed). Then it retries ``retry`` drafting
steps; losing again doubles the back-off (up to ``max_backoff``), winning reopens the gate and
resets it. Output is lossless either way: the gate only picks how many drafts a step
proposes, from what happened in earlier steps, and every draft is still verified.

The engine consults the gate under greedy decoding only: its choices follow wall-clock time,
and under sampling they would change which random numbers each step draws, so a seeded sampled
generation would no longer repeat exactly. (Greedy output is the target's whatever the gate
does.) Sampled generations keep the adaptive schedule's floor of 1 draft per step.

Step seconds are the engine's host wall clock from the start of a step to its one host sync
(every step ends in it, so on CUDA too the figure is the whole step), minus CUDA-graph
capture time spent inside the step.
"""

from __future__ import annotations

from collections import deque
from statistics import median


class DraftGate:
    """Opens and closes drafting for a batch from measured step rates (see module docstring).

    window: drafting steps the drafting rate is measured over.
    backoff / max_backoff: plain steps after the gate closes, first and at most (doubling).
    retry: drafting steps measured after a back-off before deciding again.
    margin: the drafting rate must fall this fraction below the plain rate to close the gate
        (noise must not flip a method that roughly breaks even).
    min_samples: drafting steps measured before the first decision of a generation.
    """

    def __init__(self, window: int = 8, backoff: int = 16, max_backoff: int = 256, retry: int = 3,
                 margin: float = 0.05, min_samples: int = 4) -> None:
        self.window = window
        self.min_samples = min_samples
        self.initial_backoff = backoff
        self.max_backoff = max_backoff
        self.retry = retry
        self.margin = margin
        # Seconds of plain steps, keyed by the number of rows in the runner; kept across
        # generations (a benchmark's later requests need no probe).
        self.plain_seconds: dict[int, deque] = {}
        self.reset()

    def reset(self) -> None:
        """Start a new generation (the plain-step samples are kept)."""
        self.drafting = deque(maxlen=self.window)  # (tokens, seconds) of recent drafting steps
        self.drafting_steps = 0
        self.closed_for = 0  # plain steps left before a retry
        self.retrying = False
        self.backoff = self.initial_backoff
        self.probe_due = False
        self.closed_steps = 0
        self.probes = 0
        self.closings = 0
        self.last_rates: tuple[float | None, float | None] = (None, None)

    # --- the decision ----------------------------------------------------------------------

    def drafts_now(self, batch_rows: int) -> bool:
        """Whether this step drafts, for a runner of ``batch_rows`` rows."""
        if self.closed_for > 0:
            return False
        if self.probe_due and self._plain_step_seconds(batch_rows) is None:
            self.probes += 1
            return False
        return True

    def observe(self, batch_rows: int, live_rows: int, drafted: bool, tokens: int, seconds: float) -> None:
        """One finished step: whether it drafted, the tokens its live rows kept and its seconds."""
        if seconds <= 0:
            return
        if not drafted:
            self.plain_seconds.setdefault(batch_rows, deque(maxlen=self.window)).append(seconds)
            self.probe_due = False
            if self.closed_for > 0:
                self.closed_steps += 1
                self.closed_for -= 1
                if self.closed_for == 0:
                    self.retrying, self.drafting = True, deque(maxlen=self.window)
            return
        self.drafting_steps += 1
        if self.drafting_steps == 1:
            # The first drafting step also runs the draft's prefill: not a fair sample. The
            # probe (where needed) follows it, once the caches are warm.
            self.probe_due = True
            return
        self.drafting.append((tokens, seconds))
        if len(self.drafting) < (self.retry if self.retrying else self.min_samples):
            return
        plain = self._plain_step_seconds(batch_rows)
        if plain is None:
            return
        drafting_rate = sum(t for t, _ in self.drafting) / sum(s for _, s in self.drafting)
        plain_rate = live_rows / plain
        self.last_rates = (drafting_rate, plain_rate)
        if drafting_rate < plain_rate * (1.0 - self.margin):
            self.closed_for = self.backoff
            self.backoff = min(self.max_backoff, self.backoff * 2)
            self.closings += 1
            self.retrying = False
        elif self.retrying:
            self.retrying, self.backoff = False, self.initial_backoff

    def _plain_step_seconds(self, batch_rows: int) -> float | None:
        """Median seconds of a plain step at this batch size, or else at the nearest larger one
        (it costs at least as much, so the plain rate is not overstated); None when neither
        was measured."""
        sizes = sorted(size for size, samples in self.plain_seconds.items() if size >= batch_rows and samples)
        return median(self.plain_seconds[sizes[0]]) if sizes else None

    # --- the record ------------------------------------------------------------------------

    def report(self) -> dict:
        """What the gate did in this generation, for the stats (rates in tokens/s)."""
        drafting_rate, plain_rate = self.last_rates
        return {
            "closed_steps": self.closed_steps,
            "closings": self.closings,
            "probe_steps": self.probes,
            "drafting_tokens_per_s": drafting_rate,
            "plain_tokens_per_s": plain_rate,
        }
