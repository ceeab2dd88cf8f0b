"""The drafter interface: what the decode loop asks of any drafting method, and the
:class:`Proposal` it gets back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from specdec.engine.sampling import SamplingParams
from specdec.runners import ForwardClock


@dataclass
class Proposal:
    """Draft tokens for a batch of rows and, for a sampling draft model, its distribution.

    tokens: LongTensor [batch, width] on the device; row b's drafts are its first
        ``lengths[b]`` (the rest is padding, never accepted).
    lengths: LongTensor [batch] on the device.
    probs: [batch, width, vocab] float32, the draft's warped distribution q at each proposed
        position, or None when the proposal is deterministic (q is one-hot at the token).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    probs: torch.Tensor | None = None
    #: ``lengths`` as host ints when the drafter knows them without a device sync (n-gram)
    host_lengths: list[int] | None = None

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    def row(self, index: int) -> list[int]:
        """Row ``index``'s drafts as host ints (a device sync: for tests and tools, not the loop)."""
        return self.tokens[index, : int(self.lengths[index])].tolist()


class Drafter(ABC):
    """The interface every drafting method implements (one instance serves one batch at a time)."""

    #: short name used in reports ("model", "ngram")
    name: str = "drafter"

    def __init__(self) -> None:
        self.timer: ForwardClock | None = None

    def reset(self, device: torch.device, batch_size: int = 1, extra_slots: int = 0) -> None:
        """Start a new generation of ``batch_size`` rows (forget caches and counters);
        ``extra_slots``: new positions a static cache must hold beyond the prompt."""
        self.timer = ForwardClock(device)
        self.device = torch.device(device)

    @abstractmethod
    def propose(self, contexts: list[list[int]], budgets: list[int], sampling: SamplingParams,
                generator: torch.Generator) -> Proposal:
        """Propose up to ``budgets[b]`` tokens to follow ``contexts[b]`` (prompt + accepted
        tokens) for every row b."""

    def observe(self, row: int, proposed: int, accepted: int) -> None:
        """Feedback after verification; adaptive drafters adjust row ``row``'s length here."""

    def select_rows(self, rows: list[int]) -> None:
        """Keep only ``rows`` of the batch (finished rows leave it)."""

    def record_drafts(self, drafts: list[list[int]]) -> None:
        """The last proposal's tokens as host ints (every row, full width): the engine copies
        them to the host in its one sync per step, so a drafter need not sync for them."""

    def next_length(self, gamma: int, row: int = 0) -> int:
        """How many tokens to propose next for ``row``, given the configured ``gamma``."""
        return gamma

    def drafts_now(self, batch_rows: int) -> bool:
        """Whether this step drafts at all (False: every row's draft length is 0 and the step
        is a plain decode step); see :mod:`specdec.engine.draft_gate`."""
        return True

    def observe_step(self, batch_rows: int, live_rows: int, drafted: bool, tokens: int, seconds: float) -> None:
        """A finished step of the batch: whether it drafted, the tokens its live rows kept and
        its wall seconds (for the draft gate)."""

    def gate_report(self) -> dict | None:
        """What the draft gate did this generation, or None without a gate."""
        return None

    @property
    def forwards(self) -> int:
        """Forward passes of the draft model in this generation (0 for model-free drafters)."""
        return self.timer.count if self.timer else 0

    @property
    def mean_forward_seconds(self) -> float | None:
        """Mean seconds of one decode-phase draft forward, or None."""
        return self.timer.mean_decode_seconds if self.timer else None
