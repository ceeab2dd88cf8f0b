"""Per-request bookkeeping of a batch: a row's context, what it generated, its step
statistics and when it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.engine.stats import StepStats
from specdec.engine.stopping import StopChecker


@dataclass
class Row:
    """One request's state in a batch."""

    prompt: list[int]
    stopper: StopChecker
    context: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    steps: StepStats = field(default_factory=StepStats)
    finished: bool = False
    finished_at: float = 0.0

    def take(self, tokens: list[int], now: float) -> int:
        """Append ``tokens`` until a stopping rule fires; returns how many were kept."""
        kept = 0
        for token in tokens:
            self.context.append(token)
            self.generated.append(token)
            kept += 1
            if self.stopper.should_stop(self.generated):
                self.finished, self.finished_at = True, now
                break
        return kept
