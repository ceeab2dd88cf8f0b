"""Drafters: the part that proposes tokens for the target to verify.

A drafter sees the context (prompt plus tokens accepted so far) and proposes up to a budget of
next tokens per row. It never decides acceptance; that is the verifier's job
(:mod:`specdec.engine.verify`), so a new drafting method slots in here without touching it.

- :mod:`.base`: the interface (:class:`Drafter`, :class:`Proposal`);
- :mod:`.model_draft`: :class:`ModelDraft`, a small causal LM, with its cache kept in step by
  :mod:`.draft_cache`;
- :mod:`.ngram`: :class:`NgramDraft`, prompt lookup;
- :mod:`.schedule`: :class:`DraftLengthPolicy`, how many tokens a draft model proposes.
"""

from specdec.engine.drafters.base import Drafter, Proposal
from specdec.engine.drafters.model_draft import ModelDraft
from specdec.engine.drafters.ngram import NgramDraft, lookup_continuation
from specdec.engine.drafters.schedule import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_DRAFT_SCHEDULE, DraftLengthPolicy

__all__ = ["DEFAULT_CONFIDENCE_THRESHOLD", "DEFAULT_DRAFT_SCHEDULE", "DraftLengthPolicy", "Drafter", "ModelDraft",
           "NgramDraft", "Proposal", "lookup_continuation"]
