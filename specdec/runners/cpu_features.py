"""What this CPU can do, asked once: native bf16 matrix instructions, and whether oneDNN's packed
bf16/fp16 linear kernels (specdec.runners.prepack) run here.

Most users' CPUs (AMD EPYC before Zen 4, older Xeons, laptops) have AVX2 and no AVX-512: there
oneDNN refuses to reorder a bf16 weight ("bf16 path needs avx_ne_convert or avx512bw, avx512vl
and avx512dq") and there are no native bf16 matrix products. Both facts decide defaults
(``--dtype auto``, prepacking), so both are detected here, and a trial reorder of a tiny weight
settles the second for certain (it is caught, never raised).

Overrides, for running the suite as if on another CPU (README, "Testing on other CPUs"):
``SPECDEC_CPU_BF16=0|1`` forces the native-bf16 answer; ``SPECDEC_PREPACK=0`` turns prepacking
off. A forced "1" cannot add instructions: prepacking still tries, fails and falls back.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _torch_says(check: str) -> bool:
    return bool(getattr(getattr(torch, "cpu", None), check, lambda: False)())


def has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX tiles)."""
    forced = os.environ.get("SPECDEC_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags) or _torch_says("_is_avx512_bf16_supported") or _torch_says(
        "_is_amx_tile_supported"
    )


@functools.lru_cache(maxsize=4)
def _trial_reorder(dtype: torch.dtype) -> str | None:
    """None when oneDNN reorders a ``dtype`` linear weight here, else its error (one line)."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 5)
    except (RuntimeError, NotImplementedError, AttributeError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def prepack_unsupported(dtype: torch.dtype) -> str | None:
    """None when oneDNN's packed linear kernels run for ``dtype`` on this CPU, else why not
    (one phrase for the user)."""
    if os.environ.get("SPECDEC_PREPACK") == "0":
        return "switched off by SPECDEC_PREPACK=0"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    error = _trial_reorder(dtype)
    if error is None:
        return None
    needs = "AVX512-BW/VL/DQ or AVX-NE-CONVERT" if dtype == torch.bfloat16 else "AVX512-FP16 or AVX-NE-CONVERT"
    return f"this CPU lacks the instructions oneDNN's packed {str(dtype).removeprefix('torch.')} kernels need ({needs})"
