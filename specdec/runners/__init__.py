"""The runners layer: between the decode loop and a model, everything that depends on the
device. Owns the model runner (:mod:`~specdec.runners.runner`: "logits for these new tokens",
"keep the first n positions"), KV caches (:mod:`~specdec.runners.cache`,
:mod:`~specdec.runners.slots` for ragged rows sharing one cache), sync-free forward timing
(:mod:`~specdec.runners.timing`), CUDA graphs (:mod:`~specdec.runners.cuda_graphs`), CPU kernels
and weight prepacking (:mod:`~specdec.runners.prepack`, :mod:`~specdec.runners.draft_head`),
what the CPU can do (:mod:`~specdec.runners.cpu_features`), thread counts
(:mod:`~specdec.runners.threads`) and device names and clocks (:mod:`~specdec.runners.devices`).

May import: :mod:`specdec.errors` only (and torch / transformers). Every other layer builds on it.
"""

from specdec.runners.runner import CACHE_KINDS, ModelRunner
from specdec.runners.timing import ForwardClock

__all__ = ["CACHE_KINDS", "ForwardClock", "ModelRunner"]
