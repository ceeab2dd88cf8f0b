"""Quantized linear layers with int8 activations, "w8a8" and "w4a8" (qlinear_a8.cpp).

The weights are those of :mod:`~specdec.runners.kernels.qlinear` (int8 per output channel, int4
in groups with a scale and a minimum); the activations are quantized too, each row on its own in
blocks of A inputs (the int4 group size, or :data:`INT8_ACTIVATION_BLOCK` for int8 weights):

    d = max |x[block]| / 127,  qx = nearbyint(x / d) in -127..127    (float32 d per row and block)

and the products are integer dot products (AVX-512 VNNI ``vpdpbusd``; AVX2 ``vpmaddubsw``), the
way llama.cpp multiplies its Q4 / Q8 weights by Q8 activations. Why: with float activations each
weight costs a float multiply-add per row, and a 5-row verification pays 2x a decode step here;
with int8 activations one instruction does 64 multiply-adds, so the weights' memory traffic, not
the arithmetic, sets the cost of both.

Exactness: the quantized activations depend on the row alone, integer sums are exact in any order,
and the float steps that combine them are one fixed sequence per output (qlinear_a8.cpp's
header), so a row's result is bit-identical alone or among other rows, and on the VNNI, AVX2 and
scalar paths. The model computed is a different one from the weight-only modes (its activations
are rounded to 8 bits per block): speculative decoding is lossless against *this* quantized
model, as it is against any other.

Layouts (output channels in tiles of 64 = 4 blocks of 16, N zero padded to a multiple of 64; a
tile's bytes are contiguous, so a thread reads one stream of memory):

* int8: q int8 [ceil(N / 64), ceil(K / 4), 4, 16, 4]: q[T, o, u, j, i] = W's q[64 T + 16 u + j, 4 o + i];
  scale float32 [64 * ceil(N / 64)].
* int4: q uint8 [ceil(N / 64), ceil(K / 8), 4, 16, 4]: q[T, o, u, j, i] holds channel
  n = 64 T + 16 u + j's input 8 o + i in its low nibble and 8 o + 4 + i in its high nibble;
  scale, minimum float32 [ceil(N / 64), groups, 4, 16].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specdec.runners.kernels.qlinear import ISAS, default_isa, dequantize_int4, extension

#: Activation block (inputs sharing one scale) for int8 weights; int4 weights use their group size.
INT8_ACTIVATION_BLOCK = 128
#: Output channels per tile (the unit of contiguous memory and of parallel work).
TILE = 64


def _tiled(t: torch.Tensor, inputs: int) -> torch.Tensor:
    """[N, K'] -> [ceil(N / 64), K' / inputs, 4, 16, inputs]: channels in tiles of 4 blocks of 16
    (zero padded), then steps of ``inputs`` consecutive inputs."""
    t = F.pad(t, (0, 0, 0, -t.shape[0] % TILE))
    tiles, steps = t.shape[0] // TILE, t.shape[1] // inputs
    return t.reshape(tiles, 4, 16, steps, inputs).permute(0, 3, 1, 2, 4).contiguous()


def _untiled(t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_tiled`: [tiles, steps, 4, 16, inputs] -> [64 * tiles, steps * inputs]."""
    return t.permute(0, 2, 3, 1, 4).reshape(t.shape[0] * TILE, -1)


def _tiled_groups(t: torch.Tensor) -> torch.Tensor:
    """Per-group values [N, groups] -> [ceil(N / 64), groups, 4, 16] float32 (padding channels 0)."""
    t = F.pad(t.float(), (0, 0, 0, -t.shape[0] % TILE))
    return t.reshape(-1, 4, 16, t.shape[1]).permute(0, 3, 1, 2).contiguous()


def _untiled_groups(t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_tiled_groups`: [tiles, groups, 4, 16] -> [64 * tiles, groups]."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0] * TILE, t.shape[1])


@dataclass(frozen=True)
class Int8A8Weight:
    """A packed w8a8 weight: W[n, k] ~ scale[n] * q[n, k], activations int8 in blocks of ``group_size``.

    q: int8 [ceil(N / 64), ceil(K / 4), 4, 16, 4] (module docstring); scale: float32 [64 * ceil(N / 64)].
    group_size: activation block, a multiple of 4. out_features, in_features: N, K.
    """

    q: torch.Tensor
    scale: torch.Tensor
    group_size: int
    out_features: int
    in_features: int

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [N, K] int8, scale [N]): what :func:`pack_int8_a8` takes."""
        return _untiled(self.q)[: self.out_features, : self.in_features], self.scale[: self.out_features]

    def dequantize(self) -> torch.Tensor:
        """The weight the activations are multiplied by, float32 [N, K]."""
        q, scale = self.values()
        return q.float() * scale[:, None]


@dataclass(frozen=True)
class Int4A8Weight:
    """A packed w4a8 weight: W[n, k] ~ fma(q[n, k], scale[n, k // G], minimum[n, k // G]).

    q: uint8 [ceil(N / 64), ceil(K / 8), 4, 16, 4] (module docstring); scale, minimum: float32
    [ceil(N / 64), ceil(K / G), 4, 16]. group_size: G, a multiple of 8, also the activation block.
    """

    q: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor
    group_size: int
    out_features: int
    in_features: int

    def values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q [N, K] uint8 0..15, scale, minimum [N, groups]): what :func:`pack_int4_a8` takes."""
        n, k = self.out_features, self.in_features
        q = torch.cat([self.q & 0x0F, self.q >> 4], dim=4)  # [tiles, octets, 4, 16, 8]
        return _untiled(q)[:n, :k], _untiled_groups(self.scale)[:n], _untiled_groups(self.minimum)[:n]

    def dequantize(self) -> torch.Tensor:
        """The weight the activations are multiplied by, float32 [N, K] (fma exact in float64)."""
        return dequantize_int4(*self.values(), self.group_size)


def pack_int8_a8(q: torch.Tensor, scale: torch.Tensor, group_size: int = INT8_ACTIVATION_BLOCK) -> Int8A8Weight:
    """Packs int8 weights q [N, K] (-127..127) and scales [N]; ``group_size``: activation block."""
    n, k = q.shape
    if group_size < 4 or group_size % 4:
        raise ValueError(f"the int8 activation block must be a positive multiple of 4, not {group_size}")
    if q.numel() and (int(q.min()) < -127 or int(q.max()) > 127):
        raise ValueError("w8a8 weights must lie in -127..127")
    packed = _tiled(F.pad(q.to(torch.int8), (0, -k % 4)), 4)
    return Int8A8Weight(packed, _tiled_groups(scale.reshape(n, 1)).reshape(-1), group_size, n, k)


def pack_int4_a8(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, group_size: int) -> Int4A8Weight:
    """Packs int4 weights q [N, K] (0..15), scales and minima [N, ceil(K / group_size)]; group_size a
    multiple of 8."""
    n, k = q.shape
    if group_size < 8 or group_size % 8:
        raise ValueError(f"the w4a8 group size must be a positive multiple of 8, not {group_size}")
    groups = -(-k // group_size)
    if scale.shape != (n, groups) or minimum.shape != (n, groups):
        raise ValueError(f"scale and minimum must be [{n}, {groups}] for K={k}, group size {group_size}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError("int4 values must lie in 0..15")
    octets = _tiled(F.pad(q.to(torch.uint8), (0, -k % 8)), 8)  # [tiles, K8 / 8, 4, 16, 8]
    packed = (octets[..., :4] | (octets[..., 4:] << 4)).contiguous()
    return Int4A8Weight(packed, _tiled_groups(scale), _tiled_groups(minimum), group_size, n, k)


def quantize_activations(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the kernel does to each row of x [M, K] (for tests and reading): (qx [M, K] in -127..127
    as float32, d [M, groups]); block g of row m stands for qx * d[m, g]."""
    m, k = x.shape
    groups = max(1, -(-k // group_size))
    blocks = F.pad(x.float(), (0, groups * group_size - k)).reshape(m, groups, group_size)
    d = blocks.abs().amax(dim=2) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    qx = torch.round(blocks * inv[..., None]).clamp(-127, 127)  # torch.round: half to even, as nearbyint
    return qx.reshape(m, -1)[:, :k], d


def a8_linear(
    x: torch.Tensor, weight: Int8A8Weight | Int4A8Weight, bias: torch.Tensor | None = None, isa: str | None = None
) -> torch.Tensor:
    """y = quantized(x) @ dequant(weight)^T (+ bias): x [..., K] float32 or bfloat16 -> [..., N] in x's dtype.

    isa: "avx512" (needs VNNI; without it the AVX2 path runs, same bits), "avx2" or "scalar"; None
    for :func:`~specdec.runners.kernels.qlinear.default_isa`.
    """
    if x.shape[-1:] != (weight.in_features,):  # the kernel sees only K rounded up to 4 or 8
        raise ValueError(f"x's last dimension is {tuple(x.shape)[-1:]}, the layer takes {weight.in_features} inputs")
    ext = extension()
    level = ISAS.index(isa or default_isa())
    if bias is not None:
        bias = bias.detach().float().contiguous()
    if isinstance(weight, Int8A8Weight):
        return ext.int8a8_linear(x, weight.q, weight.scale, weight.group_size, bias, weight.out_features, level)
    return ext.int4a8_linear(
        x, weight.q, weight.scale, weight.minimum, weight.group_size, bias, weight.out_features, level
    )
