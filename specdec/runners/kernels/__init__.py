"""Batch-invariant quantized linear kernels for the CPU (a small C++ extension, ``qlinear.cpp`` and
``qlinear_a8.cpp``, built once on first use and cached): weight-only int8 / int4 with float
activations (:mod:`~specdec.runners.kernels.qlinear`), and w8a8 / w4a8 with int8 activations
(:mod:`~specdec.runners.kernels.qlinear_a8`); :class:`QuantLinear` runs any of them.

Prebuild (what ``scripts/setup.sh`` runs): ``python -m specdec.runners.kernels``.
"""

from specdec.runners.kernels.qlinear import (
    ISAS,
    Int4Weight,
    Int8Weight,
    KernelBuildError,
    available_isas,
    default_isa,
    extension,
    pack_int4,
    pack_int8,
    quantize_int4,
    quantize_int8,
    quantized_linear,
)
from specdec.runners.kernels.layer import FORMATS, QuantLinear, packed_linear, quantize_weight
from specdec.runners.kernels.qlinear_a8 import Int4A8Weight, Int8A8Weight, a8_linear, pack_int4_a8, pack_int8_a8

__all__ = [
    "FORMATS",
    "ISAS",
    "Int4A8Weight",
    "Int8A8Weight",
    "a8_linear",
    "pack_int4_a8",
    "pack_int8_a8",
    "packed_linear",
    "quantize_weight",
    "Int4Weight",
    "Int8Weight",
    "KernelBuildError",
    "QuantLinear",
    "available_isas",
    "default_isa",
    "extension",
    "pack_int4",
    "pack_int8",
    "quantize_int4",
    "quantize_int8",
    "quantized_linear",
]
