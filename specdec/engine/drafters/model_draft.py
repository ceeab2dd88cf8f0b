"""Drafting with a small causal LM that shares the target's tokenizer: proposing (this
module) on a cache kept in step with each row's context (:mod:`.draft_cache`)."""

from __future__ import annotations

import torch

from specdec.engine.drafters.base import Drafter, Proposal
from specdec.engine.drafters.draft_cache import DraftCache
from specdec.engine.drafters.schedule import DraftLengthPolicy
from specdec.engine.sampling import probabilities, sample_unnormalized
from specdec.models.placement import input_device
from specdec.runners import ModelRunner
from specdec.runners.draft_head import DEFAULT_DRAFT_VOCAB, with_subset_head
from specdec.runners.prepack import decode_model
from specdec.runners.transfer import to_device


class ModelDraft(Drafter):
    """Drafting with a small causal LM that shares the target's tokenizer.

    draft_vocab: with a vocabulary over twice this size, the draft scores only this many
        frequent ids plus the prompt's and ``keep_ids`` (:mod:`specdec.runners.draft_head`); None or
        0 scores the whole vocabulary.
    prepack: run draft forwards on prepacked weights where exact (:mod:`specdec.runners.prepack`).
    cache: "dynamic", "static" or "auto" (static on CUDA; see :mod:`specdec.runners.runner`);
        graphs: CUDA graphs for its decode forwards ("auto": on CUDA, with the static cache).

    The draft keeps its own KV cache (:class:`~specdec.engine.drafters.draft_cache.DraftCache`:
    catch-up to each row's context); this class proposes: one token per forward for every row,
    within each row's budget and the schedule's confidence cut-off.
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
        # Draft forwards run on the prepacked copy where that is exact (see specdec.runners.prepack).
        self.decode_model, self.pack_report = decode_model(model, enabled=prepack)
        # With a large vocabulary, score only the frequent ids, the prompt's and keep_ids
        # (see specdec.runners.draft_head); None when the vocabulary is small or draft_vocab is off.
        self.subset_head = None
        if draft_vocab:
            subset = with_subset_head(self.decode_model, draft_vocab, keep_ids, prepack=prepack)
            if subset is not None:
                self.decode_model, self.subset_head = subset
        self.target_vocab_size = target_vocab_size
        self.length_policy = length_policy or DraftLengthPolicy()
        self.cache_kind = cache
        self.graphs = graphs
        self.cache: DraftCache | None = None

    def reset(self, device: torch.device, batch_size: int = 1, extra_slots: int = 0) -> None:
        # The draft runs where its own weights are (another GPU under a 'separate' placement);
        # the engine moves its proposals to the target's device.
        super().reset(input_device(self.decode_model), batch_size, extra_slots)
        self._generator = None
        if self.cache is None or self.cache.runner.device != self.device:
            on_cuda = self.device.type == "cuda"
            cache = ("static" if on_cuda else "dynamic") if self.cache_kind == "auto" else self.cache_kind
            graphs = on_cuda if self.graphs == "auto" else bool(self.graphs)
            self.cache = DraftCache(ModelRunner(self.decode_model, self.device, cache, graphs), self.subset_head)
        self.cache.reset(batch_size, extra_slots)
        self.length_policy.reset()

    @property
    def runner(self) -> ModelRunner | None:
        """The draft's model runner (None before the first :meth:`reset`)."""
        return self.cache.runner if self.cache is not None else None

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
        self.cache.fed_on_host(drafts)

    def select_rows(self, rows: list[int]) -> None:
        self.cache.select_rows(rows)
        self.length_policy.select_rows(rows)

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
        assert self.cache is not None and self.timer is not None, "reset() must be called first"
        generator = self._own_generator(generator)
        width = max(budgets)
        logits = self.cache.catch_up(contexts, self.timer)
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
        self.cache.fed_drafts(proposal_tokens[:, :-1])
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
