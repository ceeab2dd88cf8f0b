"""Prepacked linear layers for decoding on CPU: the same arithmetic, less memory traffic.

A decode-phase forward is a few rows of activations times every weight matrix of the model,
so its time is the time to read the weights. ``F.linear`` on a bf16 CPU tensor hands the
plain row-major weight to oneDNN, which (judging by what it costs) rearranges it into its
blocked layout on every call. Doing that once, ahead of time
(``torch.ops.mkldnn._reorder_linear_weight``, the same prepacking ``torch.compile`` applies
to frozen CPU models), made one decode forward of the 1.5B Qwen target 19-36% faster (181 ->
150 ms on a quiet machine, 275 -> 180 ms on a loaded one) and one of the 0.5B draft 27-34%
faster, on a 2-core Xeon with AMX (README, speed section).

Exact, and checked: a prepacked layer is used only at the row counts where it gave
bit-identical results to ``F.linear`` on the same weight (:func:`identical_row_counts`, at
load, on random inputs); every other call (prefill, a long verification, and on Qwen's MLP
down-projection most widths) goes through ``F.linear`` on the original weight. The packed
model's logits equal the plain model's at every width in tests/test_prepack.py, and did on
300 tokens of real text with both Qwen models; greedy output is token for token the same.

The packed copy shares every parameter with the original and leaves it untouched: the user's
model (and transformers' ``generate`` on it, the reference peer in benchmarks) runs as before.
It costs memory equal to the linear weights once more, so it is skipped, with a note, when
the machine has too little free memory.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specdec.runners.cpu_features import prepack_unsupported

#: Rows (tokens) up to which a packed layer is checked and used: a verification forward feeds
#: gamma + 1 tokens, and the adaptive draft schedule goes up to gamma 16.
MAX_PACKED_ROWS = 17
#: Free memory to keep after packing, as a multiple of the packed bytes.
MEMORY_HEADROOM = 1.5
_PACKABLE_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class PackReport:
    """What :func:`decode_model` did.

    packed_layers / total_layers: linear layers replaced / present.
    packed_bytes: extra memory the packed weights take (bytes).
    note: one line for the user (why nothing was packed, or what was).
    """

    packed_layers: int
    total_layers: int
    packed_bytes: int
    note: str


class PackedLinear(torch.nn.Module):
    """A linear layer with its weight prepacked for oneDNN.

    source: the user's linear layer: its weight and bias are read at every call (not copied),
        so an in-place update (fine-tuning, ``load_state_dict``) or a replaced parameter is
        noticed (through the tensor's version counter and identity) and the packed weight is
        rebuilt before it is used; stale weights are never multiplied.
    packed_rows: the row counts (tokens in a forward) at which the packed weight was checked
        to give exactly ``F.linear``'s result (they depend on shapes, not values).
    """

    def __init__(self, linear: torch.nn.Linear, packed_rows: frozenset[int]) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed_rows = packed_rows
        # A plain attribute (not a submodule): the user's layer is shared, not owned.
        self.__dict__["source"] = linear
        self._pack()

    def _pack(self) -> None:
        weight = self.source.weight
        self._packed_from = (weight, weight._version)
        self.packed_weight = pack_weight(weight.detach())

    @property
    def weight(self) -> torch.Tensor:
        return self.source.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.source.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        weight = self.source.weight
        if rows in self.packed_rows:
            if self._packed_from[0] is not weight or self._packed_from[1] != weight._version:
                self._pack()  # the weight changed since it was packed
            return packed_linear(x, self.packed_weight, self.source.bias)
        return F.linear(x, weight, self.source.bias)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The oneDNN blocked layout of a [out, in] weight, for inputs of a few rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, 5)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + b`` with ``W`` as :func:`pack_weight` laid it out."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def identical_row_counts(linear: torch.nn.Linear, max_rows: int = MAX_PACKED_ROWS, seed: int = 0) -> frozenset[int]:
    """The row counts 1..max_rows at which the packed weight reproduces ``F.linear`` bit for bit.

    Results differ only when the two paths add the products in a different order, which
    depends on the shapes and the kernel oneDNN picks for them, not on the values; random
    inputs of each row count expose any such difference.
    """
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(1, max_rows, linear.in_features, generator=generator).to(weight.dtype)
    packed = pack_weight(weight)
    rows_ok = set()
    with torch.inference_mode():
        for rows in range(1, max_rows + 1):
            x = inputs[:, :rows].contiguous()
            expected = F.linear(x, weight, bias)
            got = packed_linear(x, packed, bias)
            if torch.equal(expected, got):
                rows_ok.add(rows)
    return frozenset(rows_ok)


def fast_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """``linear`` prepacked where that is possible and exact (see :func:`identical_row_counts`),
    else ``linear`` itself."""
    if can_prepack(linear) is not None:
        return linear
    rows = identical_row_counts(linear)
    return PackedLinear(linear, rows) if rows else linear


def can_prepack(model: torch.nn.Module) -> str | None:
    """None when ``model`` can be prepacked, else the reason it cannot (one phrase)."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        return f"the model is on {parameter.device.type}, prepacking is for CPU"
    if parameter.dtype not in _PACKABLE_DTYPES:
        return f"the model is in {str(parameter.dtype).removeprefix('torch.')}; prepacking is for bfloat16/float16"
    return prepack_unsupported(parameter.dtype)


# model -> (its packed copy, or None for "the model itself", PackReport). Weak keys, and a value
# that never holds its key (None stands for the model; the packed copy references the model's
# linear layers, not the model object), so a model the user drops is freed with its copy.
_PACKED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[torch.nn.Module | None, PackReport]]" = weakref.WeakKeyDictionary()


def decode_model(model: torch.nn.Module, enabled: bool = True) -> tuple[torch.nn.Module, PackReport]:
    """The model to run decode forwards on: a prepacked copy of ``model`` where that is possible
    and exact, else ``model`` itself. Packed once per model object and shared by every caller
    (an engine and its drafters), so a model is never packed twice. In-place weight updates are
    picked up by the packed layers themselves (:class:`PackedLinear`); :func:`repack` starts
    over (after changing a model's structure or dtype)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not enabled:
        return model, PackReport(0, len(linears), 0, "prepacking switched off")
    if model in _PACKED:
        packed, report = _PACKED[model]
        return (packed if packed is not None else model), report
    reason = can_prepack(model)
    if reason is None:
        reason = _memory_shortfall(linears)
    if reason is not None:
        packed, report = None, PackReport(0, len(linears), 0, f"weights not prepacked: {reason}")
    else:
        packed, report = _packed_copy(model)
    _PACKED[model] = (packed, report)
    return (packed if packed is not None else model), report


def repack(model: torch.nn.Module) -> tuple[torch.nn.Module, PackReport]:
    """Forget ``model``'s packed copy and make a new one (engines built before keep the old)."""
    _PACKED.pop(model, None)
    return decode_model(model)


def _memory_shortfall(linears: list[torch.nn.Linear]) -> str | None:
    import psutil

    needed = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    available = psutil.virtual_memory().available
    if needed * MEMORY_HEADROOM > available:
        return (f"the packed copy needs {needed / 2**30:.1f} GiB and {available / 2**30:.1f} GiB are free "
                "(decoding runs on the plain weights, a little slower)")
    return None


def _packed_copy(model: torch.nn.Module) -> tuple[torch.nn.Module, PackReport]:
    # A structural copy that shares every parameter and buffer: the original stays as it was.
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    clone = copy.deepcopy(model, memo=shared)
    originals = dict(model.named_modules())
    checked: dict[tuple, frozenset[int]] = {}
    packed_layers, partial_layers, packed_bytes, total = 0, 0, 0, 0
    for parent_name, parent in list(clone.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            source = originals[f"{parent_name}.{name}" if parent_name else name]
            total += 1
            shape = (tuple(child.weight.shape), child.weight.dtype, child.bias is not None)
            if shape not in checked:
                checked[shape] = identical_row_counts(child)
            if not checked[shape]:
                continue
            setattr(parent, name, PackedLinear(source, checked[shape]))
            packed_layers += 1
            partial_layers += len(checked[shape]) < MAX_PACKED_ROWS
            packed_bytes += child.weight.numel() * child.weight.element_size()
    partial = f", {partial_layers} of them only at some forward widths" if partial_layers else ""
    note = (f"prepacked {packed_layers}/{total} linear layers for oneDNN, used where bit-identical{partial} "
            f"({packed_bytes / 2**30:.2f} GiB more memory)")
    return clone, PackReport(packed_layers, total, packed_bytes, note)
