"""``QuantLinear``: an ``nn.Linear`` replacement running one of the four packed formats.

* float activations (:mod:`~specdec.runners.kernels.qlinear`): ``int8``, ``int4``;
* int8 activations (:mod:`~specdec.runners.kernels.qlinear_a8`): ``w8a8``, ``w4a8``.
"""

from __future__ import annotations

import torch

from specdec.runners.kernels.qlinear import (
    ISAS,
    Int4Weight,
    Int8Weight,
    default_isa,
    extension,
    int4_values,
    int8_values,
    pack_int4,
    pack_int8,
    quantized_linear,
)
from specdec.runners.kernels.qlinear_a8 import (
    INT8_ACTIVATION_BLOCK,
    Int4A8Weight,
    Int8A8Weight,
    a8_linear,
    pack_int4_a8,
    pack_int8_a8,
)

PackedWeight = Int8Weight | Int4Weight | Int8A8Weight | Int4A8Weight
#: Format name -> packed class.
FORMATS = {"int8": Int8Weight, "int4": Int4Weight, "w8a8": Int8A8Weight, "w4a8": Int4A8Weight}


def quantize_weight(weight: torch.Tensor, fmt: str, group_size: int = 128) -> PackedWeight:
    """A float weight [N, K] quantized and packed in format ``fmt`` (a key of :data:`FORMATS`);
    ``group_size``: inputs per int4 group (and per activation block for w4a8)."""
    if fmt == "int8":
        return pack_int8(*int8_values(weight))
    if fmt == "w8a8":
        return pack_int8_a8(*int8_values(weight), INT8_ACTIVATION_BLOCK)
    if fmt == "int4":
        return pack_int4(*int4_values(weight, group_size), group_size)
    if fmt == "w4a8":
        return pack_int4_a8(*int4_values(weight, group_size), group_size)
    raise ValueError(f"unknown weight format {fmt!r}: one of {', '.join(FORMATS)}")


def packed_linear(
    x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None, isa: str | None = None
) -> torch.Tensor:
    """y = x @ W^T (+ bias) on the kernel of ``weight``'s format: x [..., K] float32 or bfloat16 ->
    [..., N] in x's dtype; ``isa`` as :func:`~specdec.runners.kernels.qlinear.quantized_linear` takes it."""
    if isinstance(weight, (Int8A8Weight, Int4A8Weight)):
        return a8_linear(x, weight, bias, isa)
    return quantized_linear(x, weight, bias, isa)


class QuantLinear(torch.nn.Module):
    """A drop-in replacement for ``nn.Linear`` (inference only) with quantized weights.

    Build one with :meth:`from_linear`, or from a packed weight. The packed tensors are buffers,
    so they follow ``state_dict``; the bias, if any, is kept in float32.
    """

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.format = next(name for name, cls in FORMATS.items() if isinstance(weight, cls))
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.bits = 8 if self.format in ("int8", "w8a8") else 4
        self.group_size = getattr(weight, "group_size", None)
        self.register_buffer("q", weight.q)
        self.register_buffer("scale", weight.scale)
        self.register_buffer("minimum", getattr(weight, "minimum", None))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        # Shape only, no storage (a plain attribute, so ``.to()`` and ``state_dict`` skip it): code
        # that asks a layer for its size (a head's vocabulary: ``weight.shape[0]``) keeps working.
        self.weight = torch.empty((self.out_features, self.in_features), device="meta")

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, bits: int = 8, group_size: int = 128, fmt: str | None = None) -> QuantLinear:
        """Quantizes ``linear``'s weight in format ``fmt`` (:data:`FORMATS`); without one, ``bits``
        8 (int8 per channel) or 4 (int4 in groups of ``group_size``), float activations."""
        if fmt is None:
            if bits not in (8, 4):
                raise ValueError(f"bits must be 8 or 4, not {bits}")
            fmt = "int8" if bits == 8 else "int4"
        return cls(quantize_weight(linear.weight, fmt, group_size), linear.bias)

    @property
    def packed(self) -> PackedWeight:
        """The packed weight, as the kernels take it (``weight`` is its shape only)."""
        shape = (self.out_features, self.in_features)
        if self.format == "int8":
            return Int8Weight(self.q, self.scale, *shape)
        if self.format == "int4":
            return Int4Weight(self.q, self.scale, self.minimum, self.group_size, *shape)
        if self.format == "w8a8":
            return Int8A8Weight(self.q, self.scale, self.group_size, *shape)
        return Int4A8Weight(self.q, self.scale, self.minimum, self.group_size, *shape)

    def rows(self, ids: torch.Tensor) -> QuantLinear:
        """A layer computing only output channels ``ids`` (LongTensor), with exactly this layer's
        quantized values for them (each channel's values and scales are its own): a draft's
        subset LM head (:mod:`specdec.runners.draft_head`)."""
        packed = self.packed
        values = [v[ids] for v in packed.values()]
        group = () if self.format == "int8" else (self.group_size,)
        if self.format == "int8":
            weight = pack_int8(*values)
        elif self.format == "int4":
            weight = pack_int4(*values, *group)
        elif self.format == "w8a8":
            weight = pack_int8_a8(*values, *group)
        else:
            weight = pack_int4_a8(*values, *group)
        return QuantLinear(weight, None if self.bias is None else self.bias[ids])

    def dequantized(self) -> torch.Tensor:
        """The float32 weight [N, K] this layer multiplies by (for building other layers from it)."""
        return self.packed.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The extension directly, not through ``packed``: a decode step makes about 200 of these
        # calls, and building the weight record each time cost 8 us a call (1.6 ms a step).
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x's last dimension is {tuple(x.shape)[-1:]}, the layer takes {self.in_features} inputs")
        ext, level = extension(), ISAS.index(default_isa())
        n = self.out_features
        if self.format == "w4a8":
            return ext.int4a8_linear(x, self.q, self.scale, self.minimum, self.group_size, self.bias, n, level)
        if self.format == "w8a8":
            return ext.int8a8_linear(x, self.q, self.scale, self.group_size, self.bias, n, level)
        if self.format == "int4":
            return ext.int4_linear(x, self.q, self.scale, self.minimum, self.group_size, self.bias, n, level)
        return ext.int8_linear(x, self.q, self.scale, self.bias, n, level)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}{group}"
