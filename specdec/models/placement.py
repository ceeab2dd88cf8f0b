"""Where the target and the draft model go: one device, two devices, or layers over several GPUs.

Strategies (``engine.gpu_strategy`` / S4's ``GPU_STRATEGY``):

- ``same``: both models on the requested device (the default; the only choice on a CPU).
- ``separate``: the target on the first visible GPU, the draft on the second.
- ``multi_gpu_ratio``: the target's layers over the first ``target_gpus`` visible GPUs and the
  draft's over the next ``draft_gpus`` (S4's ``TARGET_GPU_RATIO`` / ``DRAFTER_GPU_RATIO``, read
  as GPU counts), through accelerate's ``device_map="auto"`` with ``max_memory`` giving every
  other GPU 0 bytes, so no layer lands outside its share.
- ``auto``: ``device_map="auto"`` for both: accelerate fills the visible GPUs in order (on a CPU
  machine, the CPU).

"Visible" honours ``CUDA_VISIBLE_DEVICES`` (torch numbers the visible GPUs 0..n-1). A request
the machine cannot meet (more GPUs than visible, shares summing past the count, an unknown
strategy, a multi-GPU strategy on a CPU) is a :class:`UsageError` of one line, never ignored.
:func:`plan_placement` is pure: the GPU count and memory are passed in, so tests need no GPU.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from specdec.errors import UsageError

STRATEGIES = ("same", "separate", "multi_gpu_ratio", "auto")


@dataclass(frozen=True)
class ModelPlacement:
    """How to load one model: on ``device``, or spread by ``device_map`` with ``max_memory``
    (bytes per GPU index; "cpu" included)."""

    device: torch.device
    device_map: str | None = None
    max_memory: dict = field(default_factory=dict)

    def load_kwargs(self) -> dict:
        """Keyword arguments for ``from_pretrained`` (empty when the model goes on one device)."""
        if self.device_map is None:
            return {}
        kwargs = {"device_map": self.device_map}
        if self.max_memory:
            kwargs["max_memory"] = dict(self.max_memory)
        return kwargs


@dataclass(frozen=True)
class Placement:
    """The plan for both models, and one line saying what it is."""

    target: ModelPlacement
    draft: ModelPlacement
    description: str


def visible_gpus() -> int:
    """GPUs this process sees (``CUDA_VISIBLE_DEVICES`` applied by torch)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpu_memory(count: int) -> list[int]:
    return [torch.cuda.get_device_properties(i).total_memory for i in range(count)]


def plan_placement(strategy: str, device: torch.device, target_gpus: int = 1, draft_gpus: int = 1,
                   gpus: int | None = None, gpu_memory: list[int] | None = None) -> Placement:
    """The placement of target and draft for ``strategy``.

    device: the requested device (``same`` puts both there).
    target_gpus / draft_gpus: GPU counts for ``multi_gpu_ratio``.
    gpus: visible GPU count (default: asked of torch); gpu_memory: bytes per visible GPU
        (default: asked of torch), the budget ``max_memory`` gives a GPU in a model's share.
    """
    strategy = (strategy or "same").strip().lower()
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown GPU strategy {strategy!r}: use one of {', '.join(STRATEGIES)} (engine.gpu_strategy / GPU_STRATEGY)")
    gpus = visible_gpus() if gpus is None else gpus
    device = torch.device(device)
    if strategy == "same":
        one = ModelPlacement(device)
        return Placement(one, one, f"same: target and draft on {device}")
    if strategy == "auto":
        if gpus == 0:
            one = ModelPlacement(torch.device("cpu"))
            return Placement(one, one, "auto: no GPU visible, target and draft on cpu")
        spread = ModelPlacement(torch.device("cuda:0"), "auto")
        return Placement(spread, spread, f"auto: accelerate spreads each model over the {gpus} visible GPU(s)")
    if gpus == 0:
        raise UsageError(f"GPU strategy {strategy!r} needs GPUs and none is visible here: use same or auto "
                         "(or check CUDA_VISIBLE_DEVICES)")
    if strategy == "separate":
        if gpus < 2:
            raise UsageError(f"GPU strategy 'separate' needs 2 GPUs and {gpus} is visible: use same, or make a "
                             "second GPU visible (CUDA_VISIBLE_DEVICES)")
        return Placement(ModelPlacement(torch.device("cuda:0")), ModelPlacement(torch.device("cuda:1")),
                         "separate: target on cuda:0, draft on cuda:1")
    if target_gpus < 1 or draft_gpus < 1:
        raise UsageError(f"multi_gpu_ratio needs TARGET_GPU_RATIO and DRAFTER_GPU_RATIO >= 1, got "
                         f"{target_gpus} and {draft_gpus}")
    if target_gpus + draft_gpus > gpus:
        raise UsageError(f"multi_gpu_ratio asks for {target_gpus} + {draft_gpus} GPUs and {gpus} are visible: "
                         "lower TARGET_GPU_RATIO / DRAFTER_GPU_RATIO or make more GPUs visible")
    memory = gpu_memory if gpu_memory is not None else _gpu_memory(gpus)

    def share(first: int, count: int) -> ModelPlacement:
        budget = {i: (memory[i] if first <= i < first + count else 0) for i in range(gpus)}
        budget["cpu"] = 0  # never offload silently: a model that does not fit is an error
        return ModelPlacement(torch.device(f"cuda:{first}"), "auto", budget)

    target_ids = ", ".join(f"cuda:{i}" for i in range(target_gpus))
    draft_ids = ", ".join(f"cuda:{i}" for i in range(target_gpus, target_gpus + draft_gpus))
    return Placement(share(0, target_gpus), share(target_gpus, draft_gpus),
                     f"multi_gpu_ratio: target over {target_ids}; draft over {draft_ids}")


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a (possibly spread) model takes its inputs: its first parameter's device."""
    return next(model.parameters()).device


def layer_record(model: torch.nn.Module) -> dict:
    """Where a model's modules went, for the run record: {device: module count}, from accelerate's
    ``hf_device_map`` when the model was spread, else its single device."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        counts = Counter(str(d if not isinstance(d, int) else f"cuda:{d}") for d in device_map.values())
        return {"device_map": dict(sorted(counts.items())), "modules": len(device_map)}
    return {"device_map": {str(input_device(model)): "all"}, "modules": None}


def check_offload(model: torch.nn.Module, label: str) -> None:
    """Refuse a model accelerate could not fit on its GPUs: with no room it puts layers on the
    CPU or on disk by itself and the model loads without an error, then decodes from there at a
    fraction of the speed. One line instead of a silent slow run."""
    device_map = getattr(model, "hf_device_map", None) or {}
    elsewhere = sorted({str(d) for d in device_map.values() if str(d) in ("cpu", "disk")})
    gpus = {d for d in device_map.values() if str(d) not in ("cpu", "disk")}
    if elsewhere and gpus:
        raise UsageError(f"the {label} model does not fit its GPUs' share: accelerate put layers on "
                         f"{' and '.join(elsewhere)}; give it more GPUs (TARGET_GPU_RATIO / DRAFTER_GPU_RATIO) or a smaller dtype")
