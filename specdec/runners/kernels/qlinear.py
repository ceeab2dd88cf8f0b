"""Weight-only quantized linear layers for CPU decoding: int8 per output channel, int4 in groups.

A decode step (1 row) and a speculative verification (gamma + 1 rows) read the same weights, so
on a CPU they should cost about the same. PyTorch's CPU kernels pay 2.6-4.8x for 5 rows; the
kernels here (qlinear.cpp, a small C++ extension built once on first use) read each weight once
for up to 16 rows, and compute every output as one fixed sequence of correctly rounded operations
(acc = fma(x[m, k], w[n, k], acc) for k = 0 .. K-1), so:

* a row's result is bit-identical whether it is fed alone or among any other rows (batch
  invariance, which lossless greedy speculation needs: the verifier must reproduce the
  autoregressive step exactly);
* the AVX-512, AVX2 + FMA and scalar paths give bit-identical results, so a result does not
  depend on the CPU it was computed on.

Formats (weights W [N, K] = [out_features, in_features]):

* int8: W[n, k] ~ scale[n] * q[n, k], q in -127..127 (symmetric, one float32 scale per output).
* int4: W[n, k] ~ fma(q[n, k], scale[n, g], minimum[n, g]), q in 0..15, g = k // group_size
  (asymmetric: a float32 scale and minimum per output and group of ``group_size`` inputs;
  llama.cpp's Q4_0 is minimum = -8 * scale, its Q4_1 is scale d and minimum m).

Activations stay floating point: float32, or bfloat16 widened exactly to float32; the output has
the input's dtype.

Build: ``torch.utils.cpp_extension.load`` with the system C++ compiler (``$CXX`` or ``c++``) and
``ninja`` (torch's JIT builder runs it), once, on first use or ahead of time with
``python -m specdec.runners.kernels``; cached in ``$SPECDEC_KERNEL_CACHE`` (default ``~/.cache/specdec/kernels``) under a hash of the
sources, their folder, the flags, and the torch and Python versions; a later process loads it in 0.2 s.

Instruction-set path: the best of AVX-512 / AVX2 + FMA / scalar that both this CPU (cpuid) and
torch (``torch.backends.cpu.get_cpu_capability()``, which honours ``ATEN_CPU_CAPABILITY``) allow;
``SPECDEC_QLINEAR_ISA=avx512|avx2|scalar`` forces a lower one (tests use it to check the
fallbacks on a more capable CPU).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from specdec.errors import SpecdecError

#: Output channels per packed block (the kernels' vector width in float32 on AVX-512).
BLOCK = 16
#: Instruction-set paths, in the extension's numbering (0, 1, 2).
ISAS = ("scalar", "avx2", "avx512")
#: The extension's sources: the float-activation kernels (with the Python bindings), the
#: int8-activation ones (qlinear_a8.cpp, see :mod:`~specdec.runners.kernels.qlinear_a8`) and the
#: row-wise attention (attention.cpp, see :mod:`specdec.runners.rowwise_attention`).
_SOURCES = tuple(Path(__file__).with_name(name) for name in ("qlinear.cpp", "qlinear_a8.cpp", "attention.cpp"))
# No -march / -mavx*: only functions marked with target attributes use AVX2 / AVX-512, and they
# run only where the CPU has them. -ffp-contract=off keeps the scalar path's a * b + c unfused,
# so every path performs the same operations; -ffast-math would break that and is never used.
_CFLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-std=c++17"]


class KernelBuildError(SpecdecError):
    """The C++ extension could not be built or loaded (no compiler, no ninja, or a failed
    compile); the message is one line naming what to install. Exit code 2."""


def kernel_cache_dir() -> Path:
    """The folder the compiled extension is cached in (one sub-folder per source, checkout folder,
    flags and torch / Python version)."""
    root = os.environ.get("SPECDEC_KERNEL_CACHE") or Path.home() / ".cache" / "specdec" / "kernels"
    key = hashlib.sha256()
    parts = [source.read_bytes() for source in (*_SOURCES, _SOURCES[0].with_name("common.h"))]
    # The folder too: torch's builder writes the sources' absolute paths into the build file, so
    # two checkouts sharing one folder rebuilt it on each switch (and raced each other).
    where = str(_SOURCES[0].parent.resolve()).encode()
    for part in (*parts, where, " ".join(_CFLAGS).encode(), torch.__version__.encode(), sys.version.encode()):
        key.update(part)
    return Path(root) / key.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def extension():
    """The compiled extension, built on first use (tens of seconds) and loaded from the cache after.

    Raises KernelBuildError, with what to do, when there is no C++ compiler or the build fails.
    """
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelBuildError(
            f"the quantized CPU kernels need a C++ compiler to build once, and {compiler!r} was not found: "
            "install one (Debian/Ubuntu: apt install g++; macOS: xcode-select --install) or set $CXX"
        )
    from torch.utils.cpp_extension import is_ninja_available, load

    if not is_ninja_available():
        raise KernelBuildError(
            "the quantized CPU kernels need ninja to build once (torch's extension builder runs it), "
            "and it was not found: pip install ninja (or apt install ninja-build)"
        )

    build_dir = kernel_cache_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        return load(
            name="specdec_qlinear",
            sources=[str(source) for source in _SOURCES],
            extra_cflags=_CFLAGS,
            build_directory=str(build_dir),
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KernelBuildError(f"building the quantized CPU kernels in {build_dir} failed: {first}") from error


@functools.lru_cache(maxsize=1)
def available_isas() -> tuple[str, ...]:
    """The paths this machine may run, least capable first (always starts with "scalar"); asked
    once per process (every layer call needs it, and neither the CPU nor torch's setting changes)."""
    torch_level = {"AVX512": 2, "AVX2": 1}.get(torch.backends.cpu.get_cpu_capability(), 0)
    return ISAS[: min(extension().best_isa(), torch_level) + 1]


def default_isa() -> str:
    """The path used when none is given: ``$SPECDEC_QLINEAR_ISA`` if set, else the best available."""
    isas = available_isas()
    forced = os.environ.get("SPECDEC_QLINEAR_ISA")
    if forced:
        if forced not in isas:
            raise ValueError(f"SPECDEC_QLINEAR_ISA={forced!r}: this machine runs {', '.join(isas)}")
        return forced
    return isas[-1]


def _blocked(t: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [ceil(N / 16), 16, ...]: output channels in blocks of 16, zero-padded."""
    pad = -t.shape[0] % BLOCK
    if pad:
        t = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))])
    return t.reshape(t.shape[0] // BLOCK, BLOCK, *t.shape[1:])


@dataclass(frozen=True)
class Int8Weight:
    """A packed int8 weight: W[n, k] ~ scale[n] * q[n, k].

    q: int8 [ceil(N / 16), K, 16]: block b, input k, channel 16 b + j at q[b, k, j].
    scale: float32 [16 * ceil(N / 16)] (padding channels: 0).
    out_features, in_features: N, K.
    """

    q: torch.Tensor
    scale: torch.Tensor
    out_features: int
    in_features: int

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [N, K] int8, scale [N]): what :func:`pack_int8` takes."""
        q = self.q.permute(0, 2, 1).reshape(-1, self.in_features)[: self.out_features]
        return q, self.scale[: self.out_features]

    def dequantize(self) -> torch.Tensor:
        """The weight the kernel multiplies by, float32 [N, K]."""
        q, scale = self.values()
        return q.float() * scale[:, None]


@dataclass(frozen=True)
class Int4Weight:
    """A packed int4 weight: W[n, k] ~ fma(q[n, k], scale[n, k // G], minimum[n, k // G]).

    q: uint8 [ceil(N / 16), ceil(K / 2), 16]: byte q[b, p, j] holds channel 16 b + j's input 2 p
        in its low nibble and input 2 p + 1 in its high nibble.
    scale, minimum: float32 [ceil(N / 16), ceil(K / G), 16] (padding channels: 0).
    group_size: G, inputs per group, even (the last group may be shorter).
    out_features, in_features: N, K.
    """

    q: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor
    group_size: int
    out_features: int
    in_features: int

    def values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q [N, K] uint8 0..15, scale, minimum [N, groups]): what :func:`pack_int4` takes."""
        n, k = self.out_features, self.in_features
        q = torch.stack([self.q & 0x0F, self.q >> 4], dim=2)  # [Nb, pairs, 2, 16]
        q = q.reshape(q.shape[0], -1, BLOCK)[:, :k].permute(0, 2, 1).reshape(-1, k)[:n]

        def per_channel(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 2, 1).reshape(-1, t.shape[1])[:n]

        return q, per_channel(self.scale), per_channel(self.minimum)

    def dequantize(self) -> torch.Tensor:
        """The weight the kernel multiplies by, float32 [N, K] (fma computed exactly in float64)."""
        return dequantize_int4(*self.values(), self.group_size)


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, group_size: int) -> torch.Tensor:
    """fma(q, scale, minimum) per group, float32 [N, K] (exact: computed in float64, one rounding):
    q [N, K] 0..15, scale and minimum [N, ceil(K / group_size)]."""
    k = q.shape[1]

    def per_input(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(group_size, dim=1)[:, :k].double()

    return (q.double() * per_input(scale) + per_input(minimum)).float()


def pack_int8(q: torch.Tensor, scale: torch.Tensor) -> Int8Weight:
    """Packs integer weights q [N, K] (values -128..127) and float scales [N] for the kernel."""
    n, k = q.shape
    blocked = _blocked(q.to(torch.int8)).transpose(1, 2).contiguous()
    return Int8Weight(blocked, _blocked(scale.float().reshape(n, 1)).reshape(-1).contiguous(), n, k)


def pack_int4(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, group_size: int) -> Int4Weight:
    """Packs integer weights q [N, K] (values 0..15), scales and minima [N, ceil(K / group_size)];
    group_size must be even."""
    n, k = q.shape
    if group_size < 2 or group_size % 2:
        raise ValueError(f"int4 group size must be even and positive, not {group_size}")
    groups = -(-k // group_size)
    if scale.shape != (n, groups) or minimum.shape != (n, groups):
        raise ValueError(f"scale and minimum must be [{n}, {groups}] for K={k}, group size {group_size}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError("int4 values must lie in 0..15")
    blocked = _blocked(F.pad(q.to(torch.uint8), (0, k % 2))).transpose(1, 2)  # [Nb, K (even), 16]
    packed = (blocked[:, 0::2] | (blocked[:, 1::2] << 4)).contiguous()  # [Nb, ceil(K / 2), 16]

    def per_group(t: torch.Tensor) -> torch.Tensor:
        return _blocked(t.float()).transpose(1, 2).contiguous()  # [Nb, groups, 16]

    return Int4Weight(packed, per_group(scale), per_group(minimum), group_size, n, k)


def int8_values(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (q [N, K] in -127..127, scale [N]), scale = max |W[n, :]| / 127,
    q = round(W / scale)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    return torch.round(w / scale[:, None]).clamp(-127, 127), scale


def int4_values(weight: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 in groups of ``group_size`` inputs: (q [N, K] in 0..15, scale, minimum [N, groups]);
    minimum = min of the group, scale = (max - min) / 15, q = round((W - minimum) / scale)."""
    w = weight.detach().float()
    n, k = w.shape
    groups = -(-k // group_size)
    padded = F.pad(w, (0, groups * group_size - k), value=float("nan")).reshape(n, groups, group_size)
    lo = torch.nan_to_num(padded, nan=float("inf")).amin(dim=2)
    hi = torch.nan_to_num(padded, nan=float("-inf")).amax(dim=2)
    scale = (hi - lo) / 15
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: q = 0, W = minimum
    q = torch.round((padded - lo[..., None]) / safe[..., None]).clamp(0, 15)
    return q.reshape(n, groups * group_size)[:, :k].nan_to_num(0), scale, lo


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """:func:`int8_values` packed for the float-activation kernel."""
    return pack_int8(*int8_values(weight))


def quantize_int4(weight: torch.Tensor, group_size: int = 128) -> Int4Weight:
    """:func:`int4_values` (``group_size`` even) packed for the float-activation kernel."""
    return pack_int4(*int4_values(weight, group_size), group_size)


def quantized_linear(
    x: torch.Tensor, weight: Int8Weight | Int4Weight, bias: torch.Tensor | None = None, isa: str | None = None
) -> torch.Tensor:
    """y = x @ dequant(weight)^T (+ bias): x [..., K] float32 or bfloat16 -> [..., N] in x's dtype.

    isa: "avx512", "avx2" or "scalar"; None for :func:`default_isa`. Every path gives the same bits.
    """
    ext = extension()
    level = ISAS.index(isa or default_isa())
    if bias is not None:
        bias = bias.detach().float().contiguous()
    if isinstance(weight, Int8Weight):
        return ext.int8_linear(x, weight.q, weight.scale, bias, weight.out_features, level)
    return ext.int4_linear(
        x, weight.q, weight.scale, weight.minimum, weight.group_size, bias, weight.out_features, level
    )
