"""Drafters: the part that proposes tokens for the target to verify.

A drafter sees the context (prompt plus tokens accepted so far) and proposes up to
``max_tokens`` next tokens. It never decides acceptance; that is the verifier's job
(:mod:`specdec.verify`), so a new drafting method slots in here without touching it.

- :class:`ModelDraft`: a small causal LM with its own KV cache, rolled back to the
  context's accepted prefix at every step.
- :class:`NgramDraft`: prompt lookup (Saxena 2023; transformers' ``prompt_lookup_num_tokens``):
  find the last n tokens earlier in the context and propose what followed them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from .draft_gate import DraftGate
from .draft_head import DEFAULT_DRAFT_VOCAB, with_subset_head
from .prepack import decode_model
from .runners import ForwardClock, ModelRunner
from .placement import input_device
from .runners.transfer import to_device
from .sampling import SamplingParams, probabilities, sample_unnormalized


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
        is a plain decode step); see :mod:`specdec.draft_gate`."""
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


#: The product default (API, command, harness): measured on the Qwen2.5-Coder pair (20 prompts,
#: bf16, 2-core Xeon) to give 1.69x over the baseline against 1.55x for a constant gamma of 4,
#: tau 4.52 against 3.67 (README, speed section).
DEFAULT_DRAFT_SCHEDULE = "adaptive"
DEFAULT_CONFIDENCE_THRESHOLD = 0.4


class DraftLengthPolicy:
    """How many tokens a draft model proposes per step, per row of the batch.

    ``constant``: always gamma.
    ``adaptive``: starts at gamma; +2 after a step where every draft was accepted, -1 after a
    step with a rejection (transformers' "heuristic" schedule), within [1, max_gamma]; the
    drafter stops early inside a step when its own probability for the token it just drafted
    falls below ``confidence_threshold`` (a token it is unsure of is likely to be rejected,
    and every draft token after it is wasted draft time); and, with ``gate`` (the default),
    the length drops to 0 for the whole batch while drafting steps yield fewer tokens per
    second than plain decode steps (:class:`~specdec.draft_gate.DraftGate`).
    """

    def __init__(self, mode: str = "constant", confidence_threshold: float = 0.0, max_gamma: int = 16,
                 gate: bool = True) -> None:
        if mode not in ("constant", "adaptive"):
            from .errors import UsageError

            raise UsageError(f"unknown draft length schedule {mode!r}: use constant or adaptive")
        self.mode = mode
        self.confidence_threshold = confidence_threshold if mode == "adaptive" else 0.0
        self.max_gamma = max_gamma
        self.current: dict[int, int] = {}
        self.gate = DraftGate() if gate and mode == "adaptive" else None

    def reset(self) -> None:
        self.current = {}
        if self.gate is not None:
            self.gate.reset()

    def length(self, gamma: int, row: int = 0) -> int:
        if self.mode == "constant":
            return gamma
        return self.current.setdefault(row, gamma)

    def observe(self, proposed: int, accepted: int, row: int = 0) -> None:
        if self.mode == "constant" or row not in self.current or proposed == 0:
            return
        if accepted == proposed:
            self.current[row] = min(self.max_gamma, self.current[row] + 2)
        else:
            self.current[row] = max(1, self.current[row] - 1)

    def select_rows(self, rows: list[int]) -> None:
        """Renumber the rows after finished ones left the batch."""
        self.current = {new: self.current[old] for new, old in enumerate(rows) if old in self.current}


class ModelDraft(Drafter):
    """Drafting with a small causal LM that shares the target's tokenizer.

    draft_vocab: with a vocabulary over twice this size, the draft scores only this many
        frequent ids plus the prompt's and ``keep_ids`` (:mod:`specdec.draft_head`); None or
        0 scores the whole vocabulary.
    prepack: run draft forwards on prepacked weights where exact (:mod:`specdec.prepack`).
    cache: "dynamic", "static" or "auto" (static on CUDA; see :mod:`specdec.runners.runner`);
        graphs: CUDA graphs for its decode forwards ("auto": on CUDA, with the static cache).

    The draft keeps its own KV cache (a :class:`~specdec.runners.ModelRunner`). Each step it
    rolls every row's cache back to the longest prefix it shares with the row's context (the
    drafts the target accepted stay; the first rejected one and all after it go), feeds what is
    missing, then drafts one token per forward for every row.
    """

    name = "model"

    def __init__(
        self,
        model: torch.nn.Module,
        target_vocab_size: int,
        length_policy: DraftLengthPolicy | None = None,
        prepack: bool = True,
        draft_vocab: int | None = DEFAULT_DRAFT_VOCAB,
        keep_ids=(),
        cache: str = "auto",
        graphs: bool | str = "auto",
    ):
        super().__init__()
        self.model = model
        # Draft forwards run on the prepacked copy where that is exact (see specdec.prepack).
        self.decode_model, self.pack_report = decode_model(model, enabled=prepack)
        # With a large vocabulary, score only the frequent ids, the prompt's and keep_ids
        # (see specdec.draft_head); None when the vocabulary is small or draft_vocab is off.
        self.subset_head = None
        if draft_vocab:
            subset = with_subset_head(self.decode_model, draft_vocab, keep_ids, prepack=prepack)
            if subset is not None:
                self.decode_model, self.subset_head = subset
        self.target_vocab_size = target_vocab_size
        self.length_policy = length_policy or DraftLengthPolicy()
        self.cache_kind = cache
        self.graphs = graphs
        self.runner: ModelRunner | None = None
        self.cached_ids: list[list[int]] = []  # per row: the tokens its cache holds
        self.extra_slots = 0

    def reset(self, device: torch.device, batch_size: int = 1, extra_slots: int = 0) -> None:
        # The draft runs where its own weights are (another GPU under a 'separate' placement);
        # the engine moves its proposals to the target's device.
        super().reset(input_device(self.decode_model), batch_size, extra_slots)
        self._generator = None
        if self.runner is None or self.runner.device != self.device:
            on_cuda = self.device.type == "cuda"
            cache = ("static" if on_cuda else "dynamic") if self.cache_kind == "auto" else self.cache_kind
            graphs = on_cuda if self.graphs == "auto" else bool(self.graphs)
            self.runner = ModelRunner(self.decode_model, self.device, cache, graphs)
        self.started = False
        self.cached_ids = [[] for _ in range(batch_size)]
        self._fed, self._fed_host = None, None
        self.extra_slots = extra_slots
        self.length_policy.reset()

    def next_length(self, gamma: int, row: int = 0) -> int:
        return self.length_policy.length(gamma, row)

    def observe(self, row: int, proposed: int, accepted: int) -> None:
        self.length_policy.observe(proposed, accepted, row)

    def drafts_now(self, batch_rows: int) -> bool:
        gate = self.length_policy.gate
        return gate is None or gate.drafts_now(batch_rows)

    def observe_step(self, batch_rows: int, live_rows: int, drafted: bool, tokens: int, seconds: float) -> None:
        if self.length_policy.gate is not None:
            self.length_policy.gate.observe(batch_rows, live_rows, drafted, tokens, seconds)

    def gate_report(self) -> dict | None:
        gate = self.length_policy.gate
        return gate.report() if gate is not None else None

    def record_drafts(self, drafts: list[list[int]]) -> None:
        self._fed_host = [row[:-1] for row in drafts]

    def select_rows(self, rows: list[int]) -> None:
        self.runner.select_rows(rows)
        self.cached_ids = [self.cached_ids[r] for r in rows]
        self._known = [self._known[r] for r in rows]
        if self._fed_host is not None:
            self._fed_host = [self._fed_host[r] for r in rows]
        elif self._fed is not None:
            self._fed = self._fed[torch.tensor(rows, device=self._fed.device)]
        self.length_policy.select_rows(rows)

    @staticmethod
    def _shared_prefix(cached: list[int], context: list[int], known: int = 0) -> int:
        """Length of the longest common prefix (the draft tokens the target accepted stay
        cached; the first rejected one and everything after it go). ``known``: a length
        already found equal (both lists only change after it), where the comparison starts,
        so a step costs O(gamma), not O(context)."""
        limit = min(len(cached), len(context))
        for position in range(min(known, limit), limit):
            if cached[position] != context[position]:
                return position
        return limit

    def _first_logits(self, contexts: list[list[int]]) -> torch.Tensor:
        """Logits after each row's context, [batch, vocab]: the prefill on the first call;
        afterwards each row's cache is rolled back to the prefix it shares with its context
        and fed the rest (ragged across rows: left holes)."""
        if not self.started:
            self.started = True
            if self.subset_head is not None:
                self.subset_head.set_extra({t for context in contexts for t in context})
                if self.runner.graphs is not None:
                    self.runner.graphs.invalidate()  # the head's extra ids are new tensors
            self.cached_ids = [list(c) for c in contexts]
            self._known = [0] * len(contexts)
            return self.runner.start([list(c) for c in contexts], self.extra_slots, clock=self.timer)
        if self._fed is not None:
            fed = self._fed_host if self._fed_host is not None else self._fed.tolist()
            for cached, row_fed in zip(self.cached_ids, fed):
                cached.extend(row_fed)
            self._fed, self._fed_host = None, None
        # Keep at least the last context token out of the cache: its logits start the draft.
        valid = [min(self._shared_prefix(cached, context, known), len(context) - 1)
                 for cached, context, known in zip(self.cached_ids, contexts, self._known)]
        self._known = list(valid)
        self.runner.truncate(valid)
        feeds = [context[n:] for context, n in zip(contexts, valid)]
        for cached, n, feed in zip(self.cached_ids, valid, feeds):
            del cached[n:]
            cached.extend(feed)
        width = max(len(f) for f in feeds)
        tokens = [[0] * (width - len(f)) + f for f in feeds]
        layout = [[False] * (width - len(f)) + [True] * len(f) for f in feeds]
        feed = to_device(tokens, torch.long, self.device)
        return self.runner.forward(feed, None if all(all(r) for r in layout) else layout)[:, -1]

    def _own_generator(self, generator: torch.Generator) -> torch.Generator:
        """The generation's generator, or (draft on another device) one on the draft's device
        seeded from it once per generation."""
        if generator.device == self.device or (generator.device.type == self.device.type == "cpu"):
            return generator
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(generator.initial_seed())
        return self._generator

    def propose(self, contexts, budgets, sampling, generator) -> Proposal:
        assert self.runner is not None and self.timer is not None, "reset() must be called first"
        generator = self._own_generator(generator)
        batch = len(contexts)
        width = max(budgets)
        logits = self._first_logits(contexts)
        budget = to_device(budgets, torch.long, self.device)
        lengths = budget.clone()
        threshold = self.length_policy.confidence_threshold
        tokens, rows = [], []
        # On CPU a host check that every row has stopped is free and saves draft forwards; on
        # CUDA it would stall the device, so there every row drafts ``width`` tokens and
        # ``lengths`` says which of them count.
        host_checks = self.device.type != "cuda"
        for position in range(width):
            logits = _match_vocab(logits, self.target_vocab_size)
            if sampling.greedy:
                token = logits.argmax(dim=-1)
                if threshold > 0:
                    confidence = logits.float().softmax(-1).gather(1, token.unsqueeze(1)).squeeze(1)
            else:
                probs = probabilities(logits, sampling)
                token = sample_unnormalized(probs, generator)
                rows.append(probs)
                confidence = probs.gather(1, token.unsqueeze(1)).squeeze(1)
            tokens.append(token)
            if threshold > 0:
                # A row stops after the first token it is unsure of (that token still counts).
                unsure = (confidence < threshold) & (lengths > position + 1)
                lengths = torch.where(unsure, torch.full_like(lengths, position + 1), lengths)
            if position + 1 == width or (host_checks and bool((lengths <= position + 1).all())):
                break
            logits = self.runner.forward(token.unsqueeze(1))[:, -1]
        proposal_tokens = torch.stack(tokens, dim=1)
        # Every draft but the last was fed; the host copy is the loop's one sync on CPU and
        # is deferred on CUDA (the engine's step sync already brings the drafts over).
        self._fed, self._fed_host = proposal_tokens[:, :-1], None
        probs = torch.stack(rows, dim=1) if rows else None
        return Proposal(proposal_tokens, lengths.clamp(max=proposal_tokens.shape[1]), probs)

def _match_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Pad or trim draft logits to the target's vocabulary width.

    Models of one family often pad their embedding matrices to different sizes; the ids that
    exist in the shared tokenizer are the same, and padded ids get probability 0.
    """
    width = logits.shape[-1]
    if width == vocab_size:
        return logits
    if width > vocab_size:
        return logits[..., :vocab_size]
    pad = logits.new_full((*logits.shape[:-1], vocab_size - width), float("-inf"))
    return torch.cat([logits, pad], dim=-1)


#: Which earlier occurrence of the n-gram prompt lookup continues from. "earliest" (also
#: transformers' choice) is the default: on the 10 summarization prompts of the README's speed
#: section it gave tau 3.90 against 3.53 and 1.16x against 1.06x transformers' prompt lookup.
NGRAM_MATCHES = ("earliest", "latest")


class NgramDraft(Drafter):
    """Prompt lookup: match the last n tokens (n from ``max_ngram`` down to ``min_ngram``)
    anywhere earlier in the context and propose the tokens that followed the ``match``
    ("earliest", as transformers does, or "latest") occurrence. No draft model; proposals are
    deterministic (the verifier treats q as one-hot)."""

    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, match: str = "earliest") -> None:
        super().__init__()
        from .errors import UsageError

        if min_ngram < 1 or max_ngram < min_ngram:
            raise UsageError(
                f"n-gram sizes must satisfy 1 <= min_ngram <= max_ngram, got min {min_ngram}, max {max_ngram}"
            )
        if match not in NGRAM_MATCHES:
            raise UsageError(f"unknown n-gram match {match!r}: use {' or '.join(NGRAM_MATCHES)}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.match = match

    def propose(self, contexts, budgets, sampling, generator) -> Proposal:
        found = [
            lookup_continuation(context, budget, self.max_ngram, self.min_ngram, self.match)
            for context, budget in zip(contexts, budgets)
        ]
        width = max(1, max(len(f) for f in found))
        tokens = to_device([f + [0] * (width - len(f)) for f in found], torch.long, self.device)
        lengths = to_device([len(f) for f in found], torch.long, self.device)
        return Proposal(tokens, lengths, None, [len(f) for f in found])


def lookup_continuation(
    context: list[int], max_tokens: int, max_ngram: int, min_ngram: int, match: str = "earliest"
) -> list[int]:
    """The tokens that followed the earliest (or latest) earlier occurrence of the context's
    last n tokens, trying n = max_ngram down to min_ngram; [] when nothing matches."""
    if max_tokens <= 0:
        return []
    ids = np.asarray(context, dtype=np.int64)
    length = len(ids)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        tail = ids[length - n :]
        # Candidate windows start at 0 .. length-n-1, so each has at least one token after it
        # and none is the tail itself.
        windows = np.lib.stride_tricks.sliding_window_view(ids[: length - 1], n)
        hits = np.flatnonzero((windows == tail).all(axis=1))
        if hits.size:
            start = int(hits[-1] if match == "latest" else hits[0]) + n
            return ids[start : start + max_tokens].tolist()
    return []
