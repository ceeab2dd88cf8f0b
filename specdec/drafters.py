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

from .cache import KVCache
from .draft_head import DEFAULT_DRAFT_VOCAB, with_subset_head
from .forward import ForwardTimer, forward_logits
from .prepack import decode_model
from .sampling import SamplingParams, probabilities, sample


@dataclass
class Proposal:
    """Draft tokens and, for a sampling draft model, its distribution at each of them.

    tokens: proposed token ids (may be empty).
    probs: [len(tokens), vocab] float32, the draft's warped distribution q at each proposed
        position, or None when the proposal is deterministic (q is one-hot at the token).
    """

    tokens: list[int]
    probs: torch.Tensor | None = None


class Drafter(ABC):
    """The interface every drafting method implements."""

    #: short name used in reports ("model", "ngram")
    name: str = "drafter"

    def __init__(self) -> None:
        self.timer: ForwardTimer | None = None

    def reset(self, device: torch.device) -> None:
        """Start a new generation (forget caches and per-generation counters)."""
        self.timer = ForwardTimer(device)

    @abstractmethod
    def propose(
        self, context: list[int], max_tokens: int, sampling: SamplingParams, generator: torch.Generator
    ) -> Proposal:
        """Propose up to ``max_tokens`` tokens to follow ``context`` (prompt + accepted tokens)."""

    def observe(self, proposed: int, accepted: int) -> None:
        """Feedback after verification; adaptive drafters adjust their length here."""

    def next_length(self, gamma: int) -> int:
        """How many tokens to propose next, given the configured ``gamma``."""
        return gamma

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
    """How many tokens a draft model proposes per step.

    ``constant``: always gamma.
    ``adaptive``: starts at gamma; +2 after a step where every draft was accepted, -1 after a
    step with a rejection (transformers' "heuristic" schedule), within [1, max_gamma]; and the
    drafter stops early inside a step when its own probability for the token it just drafted
    falls below ``confidence_threshold`` (a token it is unsure of is likely to be rejected,
    and every draft token after it is wasted draft time).
    """

    def __init__(self, mode: str = "constant", confidence_threshold: float = 0.0, max_gamma: int = 16) -> None:
        if mode not in ("constant", "adaptive"):
            from .errors import UsageError

            raise UsageError(f"unknown draft length schedule {mode!r}: use constant or adaptive")
        self.mode = mode
        self.confidence_threshold = confidence_threshold if mode == "adaptive" else 0.0
        self.max_gamma = max_gamma
        self.current: int | None = None

    def reset(self) -> None:
        self.current = None

    def length(self, gamma: int) -> int:
        if self.mode == "constant":
            return gamma
        if self.current is None:
            self.current = gamma
        return self.current

    def observe(self, proposed: int, accepted: int) -> None:
        if self.mode == "constant" or self.current is None or proposed == 0:
            return
        if accepted == proposed:
            self.current = min(self.max_gamma, self.current + 2)
        else:
            self.current = max(1, self.current - 1)


class ModelDraft(Drafter):
    """Drafting with a small causal LM that shares the target's tokenizer.

    draft_vocab: with a vocabulary over twice this size, the draft scores only this many
        frequent ids plus the prompt's and ``keep_ids`` (:mod:`specdec.draft_head`); None or
        0 scores the whole vocabulary.
    prepack: run draft forwards on prepacked weights where exact (:mod:`specdec.prepack`).

    The draft keeps its own KV cache. At each step it rolls the cache back to the longest
    prefix it holds that is still part of the context (accepted drafts stay cached; rejected
    ones are cropped), feeds what is missing, then drafts one token per forward.
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
    ):
        super().__init__()
        self.model = model
        # Draft forwards run on the prepacked copy where that is exact (see specdec.prepack).
        self.decode_model, self.pack_report = decode_model(model, enabled=prepack)
        # With a large vocabulary, score only the frequent ids, the prompt's and keep_ids
        # (see specdec.draft_head); None when the vocabulary is small or draft_vocab is off.
        self.subset_head = None
        if draft_vocab:
            subset = with_subset_head(self.decode_model, draft_vocab, keep_ids)
            if subset is not None:
                self.decode_model, self.subset_head = subset
        self.target_vocab_size = target_vocab_size
        self.length_policy = length_policy or DraftLengthPolicy()
        self.cache: KVCache | None = None
        self.cached_ids: list[int] = []
        self._known_valid = 0

    def reset(self, device: torch.device) -> None:
        super().reset(device)
        self.device = device
        self.cache = KVCache(self.model)
        self.cached_ids = []
        self._known_valid = 0
        self.length_policy.reset()

    def next_length(self, gamma: int) -> int:
        return self.length_policy.length(gamma)

    def observe(self, proposed: int, accepted: int) -> None:
        self.length_policy.observe(proposed, accepted)

    def _valid_prefix(self, context: list[int]) -> int:
        """Length of the longest prefix of the cached tokens that matches ``context``.

        Both lists only grow by appending after the point where they last matched, so the
        comparison starts there instead of at position 0 (O(gamma) per step, not O(length)).
        """
        limit = min(len(self.cached_ids), len(context))
        for position in range(min(self._known_valid, limit), limit):
            if self.cached_ids[position] != context[position]:
                return position
        return limit

    def propose(self, context, max_tokens, sampling, generator) -> Proposal:
        assert self.cache is not None and self.timer is not None, "reset() must be called first"
        if max_tokens <= 0:
            return Proposal([], None)
        # Keep at least the last context token out of the cache: its logits start the draft.
        valid = min(self._valid_prefix(context), len(context) - 1)
        self.cache.crop(valid)
        del self.cached_ids[valid:]
        self._known_valid = valid
        feed = context[valid:]
        is_prefill = self.cache.length == 0
        if is_prefill and self.subset_head is not None:
            self.subset_head.set_extra(context)
        tokens: list[int] = []
        rows: list[torch.Tensor] = []
        threshold = self.length_policy.confidence_threshold
        for _ in range(max_tokens):
            logits = self.timer.run(
                forward_logits, self.decode_model, self.cache, feed, self.device, prefill=is_prefill
            )[-1]
            self.cached_ids.extend(feed)
            is_prefill = False
            logits = _match_vocab(logits, self.target_vocab_size)
            if sampling.greedy:
                if threshold > 0:
                    probs = logits.float().softmax(-1)
                    token = int(probs.argmax())
                    confidence = float(probs[token])
                else:
                    token = int(logits.argmax())
                    confidence = 1.0
            else:
                probs = probabilities(logits, sampling)
                token = int(sample(probs.unsqueeze(0), generator))
                rows.append(probs)
                confidence = float(probs[token])
            tokens.append(token)
            if confidence < threshold:
                break
            feed = [token]
        return Proposal(tokens, torch.stack(rows) if rows else None)


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

    def propose(self, context, max_tokens, sampling, generator) -> Proposal:
        return Proposal(lookup_continuation(context, max_tokens, self.max_ngram, self.min_ngram, self.match), None)


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
