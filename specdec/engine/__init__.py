"""The engine layer: turns one batch of prompts into tokens and a stats record per row.

Owns the decode loop (:mod:`~specdec.engine.loop`), the verification rules
(:mod:`~specdec.engine.verify`), sampling and its warping (:mod:`~specdec.engine.sampling`),
stopping (:mod:`~specdec.engine.stopping`), per-step statistics (:mod:`~specdec.engine.stats`),
the draft gate (:mod:`~specdec.engine.draft_gate`) and the drafters
(:mod:`~specdec.engine.drafters`: draft model, n-gram lookup, draft-length schedules).

May import: :mod:`specdec.runners` (caches, kernels, devices), :mod:`specdec.models`
(placement helpers) and :mod:`specdec.errors`. Never the harness (:mod:`specdec.bench`), the
commands (:mod:`specdec.cli`) or the published API (:mod:`specdec.main`).
"""

from specdec.engine.loop import Engine, GenerationConfig, GenerationResult

__all__ = ["Engine", "GenerationConfig", "GenerationResult"]


from specdec import old_names  # noqa: E402

__getattr__ = old_names(__name__, "specdec.engine.loop")  # the old flat module's other names
