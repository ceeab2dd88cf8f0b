"""One step of the decode loop, over the rows still in the batch: a chunk of plain decode
forwards (the baseline), or draft -> one target forward -> verify -> keep (speculation).

Host syncs: one per step (the accepted counts, next tokens and drafts come to the host
together, in one copy), none inside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from specdec.engine.drafters import Drafter, Proposal
from specdec.engine.request import GenerationConfig
from specdec.engine.rows import Row
from specdec.engine.sampling import probabilities, sample_unnormalized
from specdec.engine.verify import verify_greedy_batch, verify_sampling_batch


@dataclass
class Stepper:
    """The steps of one generation.

    rows: every request of the batch; in_batch (passed per step): runner row -> request index.
    sync_every: plain decode forwards between host syncs (autoregressive chunks).
    """

    runner: object
    drafter: Drafter | None
    rows: list[Row]
    config: GenerationConfig
    generator: torch.Generator
    device: torch.device
    sync_every: int

    @property
    def sampling(self):
        return self.config.sampling

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row from logits [batch, vocab] (argmax, or a draw from the
        warped p), on the device."""
        if self.sampling.greedy:
            return logits.argmax(dim=-1)
        return sample_unnormalized(probabilities(logits, self.sampling), self.generator)

    def step(self, in_batch: list[int], last: torch.Tensor) -> torch.Tensor:
        """One step; returns each runner row's last token [rows] (fed first next step)."""
        if self.drafter is None:
            return self.autoregressive_chunk(in_batch, last)
        return self.speculative_step(in_batch, last)

    # --- the baseline ---------------------------------------------------------------------------
    def autoregressive_chunk(self, in_batch: list[int], last: torch.Tensor) -> torch.Tensor:
        """Up to ``sync_every`` plain decode forwards without a host sync, then one sync that
        applies the stopping rules (tokens computed past a row's stop are dropped)."""
        rows = self.rows
        live = [not rows[r].finished for r in in_batch]
        remaining = min(self.config.max_new_tokens - len(rows[r].generated) for r, on in zip(in_batch, live) if on)
        layout = None if all(live) else [[on] for on in live]
        produced = []
        for _ in range(max(1, min(self.sync_every, remaining))):
            logits = self.runner.forward(last.unsqueeze(1), layout)
            last = self.choose(logits[:, -1])
            produced.append(last)
        tokens = torch.stack(produced, dim=1).tolist()  # the one host sync of the chunk
        now = time.perf_counter()
        for index, (r, on) in enumerate(zip(in_batch, live)):
            if on:
                for token in tokens[index]:
                    kept = rows[r].take([token], now)
                    rows[r].steps.record(0, 0, kept)
                    if rows[r].finished:
                        break
        return last

    # --- speculation ----------------------------------------------------------------------------
    def speculative_step(self, in_batch: list[int], last: torch.Tensor) -> torch.Tensor:
        """Draft, verify every row in one target forward, keep what each row accepted."""
        drafter, runner = self.drafter, self.runner
        step_started, capture_before = time.perf_counter(), self._capture_seconds()
        live = [not self.rows[r].finished for r in in_batch]
        # The draft gate may make this a plain step (every length 0) where drafting has not paid.
        # Greedy only: its choices follow wall-clock time, and under sampling they would change
        # which random numbers a step draws, so a seeded generation would not repeat exactly.
        gated = self.sampling.greedy
        proposal, raw, lengths_host, width = self._propose(in_batch, live, gated)
        # .to(): a draft on another GPU proposes there (a no-op on the same device).
        drafts = proposal.tokens[:, :width].to(self.device) if proposal is not None else last.new_zeros((len(in_batch), 0))
        draft_lengths = (proposal.lengths.clamp(max=width).to(self.device) if proposal is not None
                         else last.new_zeros(len(in_batch)))
        feed = torch.cat([last.unsqueeze(1), drafts], dim=1)
        layout = [[on] + [on and j < n for j in range(width)] for on, n in zip(live, lengths_host)]
        if all(all(slots) for slots in layout):
            layout = None
        before = list(runner.lengths)
        logits = runner.forward(feed, layout)
        accepted, next_token = self._verify(drafts, draft_lengths, proposal, width, logits)
        # The one host sync of the step: decisions, next tokens, drafts and their lengths.
        decided = torch.cat([accepted.unsqueeze(1), next_token.unsqueeze(1), draft_lengths.unsqueeze(1),
                             raw.tokens.to(self.device) if raw is not None else drafts], dim=1).tolist()
        now = time.perf_counter()
        keep, drafts_host, step_tokens = self._keep(in_batch, live, decided, before, width, now)
        step_seconds = now - step_started - (self._capture_seconds() - capture_before)
        if gated:
            drafter.observe_step(len(in_batch), sum(live), width > 0, step_tokens, step_seconds)
        runner.truncate(keep)
        if raw is not None:
            drafter.record_drafts(drafts_host)
        return next_token

    def _propose(self, in_batch: list[int], live: list[bool], gated: bool):
        """The drafter's proposal for the live rows within their budgets; returns (proposal or
        None when nothing is drafted, the raw proposal, each row's draft count on the host, the
        step's draft width)."""
        drafter = self.drafter
        drafting = drafter.drafts_now(len(in_batch)) if gated else True
        budgets = [
            min(drafter.next_length(self.config.gamma, i), self.config.max_new_tokens - len(self.rows[r].generated) - 1)
            if on and drafting else 0
            for i, (r, on) in enumerate(zip(in_batch, live))
        ]
        proposal = raw = None
        if max(budgets) > 0:
            contexts = [self.rows[r].context for r in in_batch]
            proposal = raw = drafter.propose(contexts, budgets, self.sampling, self.generator)
        lengths_host = self._host_lengths(proposal, budgets)
        width = max(lengths_host) if proposal is not None else 0
        if width == 0:
            proposal = None
        return proposal, raw, lengths_host, width

    def _keep(self, in_batch, live, decided, before, width: int, now: float):
        """Each live row takes its accepted drafts and the next token (until a stop); returns
        (the cache length each runner row keeps, each row's raw drafts, tokens kept this step)."""
        keep, drafts_host, step_tokens = [], [], 0
        for index, (r, on) in enumerate(zip(in_batch, live)):
            n_accepted, token, proposed, *row_drafts = decided[index]
            drafts_host.append(row_drafts)
            row_drafts = row_drafts[:width]
            if not on:
                keep.append(before[index])
                continue
            kept = self.rows[r].take(row_drafts[:n_accepted] + [token], now)
            step_tokens += kept
            self.rows[r].steps.record(proposed, n_accepted, kept)
            self.drafter.observe(index, proposed, n_accepted)
            # The cache keeps the fed last token and the accepted drafts.
            keep.append(before[index] + 1 + n_accepted)
        return keep, drafts_host, step_tokens

    def _capture_seconds(self) -> float:
        """CUDA-graph capture seconds so far (target and draft; host-side, no sync)."""
        timer = self.drafter.timer if self.drafter is not None else None
        return self.runner.clock.capture_seconds + (timer.capture_seconds if timer is not None else 0.0)

    def _host_lengths(self, proposal: Proposal | None, budgets: list[int]) -> list[int]:
        """Each row's draft count for laying out the target forward: exact when the drafter
        knows it on the host or the device is a CPU (reading it costs nothing there), else
        the budget (the verifier ignores drafts past a row's length)."""
        if proposal is None:
            return [0] * len(budgets)
        if proposal.host_lengths is not None:
            return list(proposal.host_lengths)
        if self.device.type != "cuda":
            return proposal.lengths.tolist()
        return [min(b, proposal.width) for b in budgets]

    def _verify(self, drafts, draft_lengths, proposal, width, logits):
        if self.sampling.greedy:
            return verify_greedy_batch(drafts, draft_lengths, logits)
        draft_probs = proposal.probs[:, :width].to(logits.device) if proposal is not None and proposal.probs is not None else None
        return verify_sampling_batch(drafts, draft_lengths, draft_probs, probabilities(logits, self.sampling), self.generator)
