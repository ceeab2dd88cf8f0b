"""Model runners: the layer between the decode loop and a model (KV cache, kernels, timing).

See :mod:`specdec.runners.runner` for the interface, :mod:`specdec.runners.slots` for how a
batch of rows with ragged lengths shares one cache, :mod:`specdec.runners.timing` for
sync-free forward timing and :mod:`specdec.runners.cuda_graphs` for the CUDA-only part.
"""

from .runner import CACHE_KINDS, ModelRunner
from .timing import ForwardClock

__all__ = ["CACHE_KINDS", "ForwardClock", "ModelRunner"]
