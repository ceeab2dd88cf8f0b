"""Host data to the device without stalling it.

``torch.tensor(list, device="cuda")`` copies from pageable host memory, which makes the host
wait for the device (PyTorch's sync debug mode reports it). Staged through pinned memory and
copied with ``non_blocking=True``, the copy is queued behind the work already on the stream
and the host goes on. Used for the small per-step tensors (positions, slot validity, draft
tokens) of the decode loop.
"""

from __future__ import annotations

import torch


def to_device(data, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(data, dtype=dtype)`` on ``device``, without a host sync on CUDA."""
    tensor = torch.tensor(data, dtype=dtype)
    if device.type != "cuda":
        return tensor if device.type == "cpu" else tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
