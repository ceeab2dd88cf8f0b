"""A draft LM head that scores a subset of the vocabulary (FR-Spec, Zhao et al. 2025,
"Accelerating Large-Vocabulary Language Models via Frequency-Ranked Speculative Sampling").

With a 152k-token vocabulary the LM head is a large share of a small draft model: 136M of the
Qwen2.5-Coder-0.5B's 630M parameters. A decode forward reads all of it to score tokens that
almost never come. The draft scores only

- the ``size`` lowest token ids: byte-level BPE vocabularies number tokens in merge order,
  so low ids are the frequent ones (ids below 32768 are 92-96% of the tokens of every prompt
  set in ../shared/data with the Qwen tokenizer),
- the tokens of the prompt (generated text reuses them: names, rare words),
- the ids the caller names (end-of-sequence and other special tokens).

Every other token gets logit -inf, so the draft never proposes it. Lossless: the target
verifies every proposal against its full distribution, and speculative sampling is exact for
any draft distribution q (Leviathan et al. 2023), here one that is 0 outside the subset. The
price is acceptance at positions where the target's token lies outside the subset.
"""

from __future__ import annotations

import copy

import torch

from specdec.runners.kernels.layer import QuantLinear
from specdec.runners.prepack import fast_linear

#: Token ids the draft head scores by default (the FR-Spec paper's choice for large vocabularies).
DEFAULT_DRAFT_VOCAB = 32768


class SubsetHead(torch.nn.Module):
    """An LM head that returns full-width logits, -inf outside ``static_ids`` and the per-
    generation ``extra`` ids.

    head: the original head, a bias-free ``nn.Linear`` (its [vocab, hidden] weight is shared, not
        copied) or a :class:`~specdec.runners.kernels.QuantLinear` (the subset's rows are repacked
        with exactly their quantized values, so a quantized draft keeps its own logits there).
    static_ids: sorted LongTensor of the ids scored in every generation.
    """

    def __init__(self, head: torch.nn.Module, static_ids: torch.Tensor, prepack: bool = True) -> None:
        super().__init__()
        self.head = head
        self.quantized = isinstance(head, QuantLinear)
        self.vocab_size = head.weight.shape[0]
        self.static_ids = static_ids
        self._static_set = set(static_ids.tolist())
        self.static = self._rows(static_ids, prepack)
        self.extra_ids = static_ids.new_empty(0)
        self.extra: torch.nn.Module | None = None

    def _rows(self, ids: torch.Tensor, prepack: bool = False) -> torch.nn.Module:
        """A layer scoring the head's rows ``ids`` only."""
        if self.quantized:
            return self.head.rows(ids)
        weight = self.head.weight.detach()
        rows = torch.nn.Linear(weight.shape[1], len(ids), bias=False, dtype=weight.dtype, device=weight.device)
        rows.weight = torch.nn.Parameter(weight[ids].contiguous(), requires_grad=False)
        return fast_linear(rows) if prepack else rows

    def set_extra(self, token_ids) -> None:
        """Also score ``token_ids`` (e.g. the prompt's) until the next call."""
        extra = sorted({int(t) for t in token_ids if 0 <= int(t) < self.vocab_size} - self._static_set)
        self.extra_ids = torch.tensor(extra, dtype=torch.long, device=self.static_ids.device)
        self.extra = self._rows(self.extra_ids) if extra else None

    @property
    def scored(self) -> int:
        """How many token ids the head scores now."""
        return len(self.static_ids) + len(self.extra_ids)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden.new_full((*hidden.shape[:-1], self.vocab_size), float("-inf"))
        logits.index_copy_(-1, self.static_ids, self.static(hidden))
        if self.extra is not None:
            logits.index_copy_(-1, self.extra_ids, self.extra(hidden))
        return logits


def with_subset_head(model: torch.nn.Module, size: int, keep_ids=(), prepack: bool = True) -> tuple[torch.nn.Module, SubsetHead] | None:
    """A shallow copy of ``model`` whose LM head is a :class:`SubsetHead` over the ``size``
    lowest ids plus ``keep_ids``; None when the vocabulary is not larger than twice ``size``
    (the saving would not pay for the lost acceptance) or the model's head is neither a bias-free
    ``nn.Linear`` nor a :class:`~specdec.runners.kernels.QuantLinear`. ``model`` itself is not
    changed (it may also be the target)."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if not isinstance(head, (torch.nn.Linear, QuantLinear)) or weight is None or head.bias is not None:
        return None
    if weight.shape[0] <= 2 * size or (weight.is_meta and not isinstance(head, QuantLinear)):
        return None
    name = next((n for n, m in model.named_children() if m is head), None)
    if name is None:
        return None
    ids = set(range(size)) | {int(i) for i in keep_ids if 0 <= int(i) < weight.shape[0]}
    device = head.q.device if isinstance(head, QuantLinear) else weight.device
    static_ids = torch.tensor(sorted(ids), dtype=torch.long, device=device)
    subset = SubsetHead(head, static_ids, prepack)
    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    setattr(clone, name, subset)
    return clone, subset
