"""Batch-invariant weight-only int8 / int4 linear kernels for the CPU (a small C++ extension,
``qlinear.cpp``, built once on first use and cached; see :mod:`~specdec.runners.kernels.qlinear`).

Prebuild (what ``scripts/setup.sh`` runs): ``python -m specdec.runners.kernels``.
"""

from specdec.runners.kernels.qlinear import (
    ISAS,
    Int4Weight,
    Int8Weight,
    KernelBuildError,
    QuantLinear,
    available_isas,
    default_isa,
    extension,
    pack_int4,
    pack_int8,
    quantize_int4,
    quantize_int8,
    quantized_linear,
)

__all__ = [
    "ISAS",
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
