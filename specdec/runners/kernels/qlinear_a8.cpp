// Quantized linear layers with int8 activations (w8a8, w4a8): integer dot products, the way
// llama.cpp multiplies its Q4 / Q8 weights by Q8 activations, and still batch invariant.
//
//     y[M, N] = x[M, K] @ dequant(W)[N, K]^T (+ bias[N])
//
// Activations: each row of x is quantized on its own, in blocks of A inputs (A = the int4 group
// size; 128 for int8 weights): d = max |x[block]| / 127, qx = nearbyint(x * (1 / d)) in
// -127..127, and xsum = the block's sum of qx. That depends on the row alone.
//
// Weights (packed by qlinear_a8.py), output channels in blocks of 16, blocks in tiles of 4 (64
// channels; N is zero padded to a multiple of 64). A tile's bytes are contiguous, step by step:
// [tiles][steps][4 blocks][16 channels][4 bytes], so each thread streams one run of memory
// (four interleaved block streams of 12 KB each read at 15 GB/s; one stream reads faster).
//   int8: q in -127..127, one float32 scale per channel ([N64]); step o holds channel j's
//         inputs 4o .. 4o + 3 side by side (K rounded up to 4, zero padded).
//   int4: q in 0..15, a float32 scale and minimum per (channel, group of A inputs), each
//         [tiles][groups][4][16]; byte i of channel j at step o holds input 8o + i (low nibble)
//         and 8o + 4 + i (high nibble) (K rounded up to 8, zero padded). A is a multiple of 8.
//
// Per output (row m, channel n) and block b, the integer dot product isum = sum qx * q is exact
// in int32 whatever the order of its terms, so any instruction sequence (VNNI's vpdpbusd, AVX2's
// vpmaddubsw + vpmaddwd, plain C++) gives the same integer. The floating-point part is one fixed
// sequence per output, the same on every path:
//   int4: p = float(xsum_b) * min[n, b]; t = fma(float(isum_b), scale[n, b], p); acc = fma(t, d_b, acc)
//   int8: acc = fma(float(isum_b), d_b, acc);        and at the end y = acc * scale[n]
// then y + bias[n]. So a row's result depends on nothing but that row (not on M, the other rows,
// the tiling or the threads), and AVX-512 VNNI, AVX2 and scalar give the same bits on any CPU.
//
// Build: compiled with qlinear.cpp into one extension (same flags: -O3 -ffp-contract=off, no
// -ffast-math, no -march; the vector functions carry target attributes).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define QA_X86 1
#include <immintrin.h>
#define QA_AVX2 __attribute__((target("avx2,fma")))
#define QA_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma")))
#else
#define QA_X86 0
#endif

namespace specdec_a8 {
namespace {

constexpr int64_t kBlock = 16;      // output channels per packed block
constexpr int64_t kTileBlocks = 4;  // blocks per unit of parallel work (64 outputs)
constexpr int64_t kUnitBytes = 64;  // bytes per block per step (16 channels x 4 bytes)
constexpr int64_t kStepBytes = kUnitBytes * kTileBlocks;  // bytes per tile per step
constexpr int kMaxRows = 16;        // rows sharing one pass over a tile's weights

enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

struct Weights {
  bool int4;
  const uint8_t* q;      // [tiles][steps][4][16][4]
  int64_t steps;         // int8: K4 / 4; int4: K8 / 8
  const float* scale;    // int8: [Nb * 16]; int4: [tiles][groups][4][16]
  const float* minimum;  // int4 only
  int64_t group;         // inputs per block (A), a multiple of 8 (int4) or 4 (int8)
  int64_t groups;

  // Block b's 64 bytes at step s, and the offset of its 16 scales (minima) of group g.
  const uint8_t* unit(int64_t b, int64_t s) const {
    return q + (b / kTileBlocks) * steps * kStepBytes + s * kStepBytes + (b % kTileBlocks) * kUnitBytes;
  }
  int64_t group_at(int64_t b, int64_t g) const {
    return (((b / kTileBlocks) * groups + g) * kTileBlocks + b % kTileBlocks) * kBlock;
  }
};

// The quantized activations: row m's inputs at qx + m * ldx (padded with zeros to the weights'
// padded K), its block scales at d + m * groups and block sums at xsum + m * groups.
struct QRows {
  const int8_t* qx;
  int64_t ldx;
  const float* d;
  const int32_t* xsum;
  int64_t groups;
};

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Scalar path: the reference, and what runs without AVX2.
// ---------------------------------------------------------------------------------------------

// Rows [r0, r0 + mr) times block b into y (float32, finished except the int8 scale and the bias).
void block_scalar(const QRows& x, int64_t r0, int mr, const Weights& w, int64_t b, float* y, int64_t ldy) {
  const int64_t per_step = w.int4 ? 8 : 4;
  for (int r = 0; r < mr; ++r) {
    const int64_t m = r0 + r;
    const int8_t* xr = x.qx + m * x.ldx;
    for (int j = 0; j < kBlock; ++j) {
      float acc = 0.0f;
      for (int64_t g = 0; g < w.groups; ++g) {
        const int64_t s0 = g * w.group / per_step, s1 = std::min(w.steps, (g + 1) * w.group / per_step);
        int32_t isum = 0;
        for (int64_t s = s0; s < s1; ++s) {
          const uint8_t* unit = w.unit(b, s) + j * 4;
          for (int i = 0; i < 4; ++i) {
            if (w.int4) {
              isum += static_cast<int32_t>(unit[i] & 0x0F) * xr[8 * s + i];
              isum += static_cast<int32_t>(unit[i] >> 4) * xr[8 * s + 4 + i];
            } else {
              isum += static_cast<int32_t>(static_cast<int8_t>(unit[i])) * xr[4 * s + i];
            }
          }
        }
        const float dg = x.d[m * x.groups + g];
        if (w.int4) {
          const int64_t at = w.group_at(b, g) + j;
          const float p = static_cast<float>(x.xsum[m * x.groups + g]) * w.minimum[at];
          const float t = std::fma(static_cast<float>(isum), w.scale[at], p);
          acc = std::fma(t, dg, acc);
        } else {
          acc = std::fma(static_cast<float>(isum), dg, acc);
        }
      }
      y[m * ldy + b * kBlock + j] = acc;
    }
  }
}

#if QA_X86
// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI path: a __m512i holds a block's 16 channels x 4 inputs; vpdpbusd multiplies them
// (unsigned) by 4 broadcast activations (signed) and adds each channel's 4 products to its int32
// lane. Int8 weights are made unsigned by flipping the sign bit (q + 128) and the 128 * xsum that
// adds is taken off again, exactly, before the block's float step.
// ---------------------------------------------------------------------------------------------

// acc += dot4(w as uint8, x as int8) lane by lane. Inline asm ties the accumulator to one register:
// GCC 12 models the intrinsic as non-destructive and copies every accumulator each step (about
// one vmovdqa64 per vpdpbusd, measured on the 5-row tile).
QA_VNNI __attribute__((always_inline)) inline void dpbusd(__m512i& acc, __m512i w, __m512i x) {
  asm("vpdpbusd %[x], %[w], %[acc]" : [acc] "+v"(acc) : [w] "v"(w), [x] "v"(x));
}

// Blocks handled per pass over a group's steps: MR * NT int32 accumulators, 2 * NT unpacked
// weight vectors and 2 broadcasts fit the 32 zmm registers.
constexpr int tile_blocks_vnni(int mr) { return mr <= 5 ? 4 : (mr <= 12 ? 2 : 1); }

// Rows [r0, r0 + MR) times the tile starting at block b0 (4 blocks). For each group the tile's
// blocks are done NT at a time; the later passes find the group's bytes (256 per step) in L1,
// so memory is read once, in order. The float accumulators live in memory (touched once per
// group and block), so the registers hold only the integer ones.
template <int MR, int NT, bool INT4>
QA_VNNI void tile_vnni(const QRows& x, int64_t r0, const Weights& w, int64_t b0, float* y, int64_t ldy) {
  const int64_t per_step = INT4 ? 8 : 4;
  const uint8_t* q = w.unit(b0, 0);  // block b0 + u at step s: q + s * kStepBytes + u * kUnitBytes
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = x.qx + (r0 + r) * x.ldx;
  alignas(64) float acc[MR][kTileBlocks][kBlock] = {};

  for (int64_t g = 0; g < w.groups; ++g) {
    const int64_t s0 = g * w.group / per_step, s1 = std::min(w.steps, (g + 1) * w.group / per_step);
    for (int u0 = 0; u0 < kTileBlocks; u0 += NT) {
      const uint8_t* qu = q + u0 * kUnitBytes;
      __m512i isum[MR][NT];
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) isum[r][t] = _mm512_setzero_si512();
      for (int64_t s = s0; s < s1; ++s) {
        if constexpr (INT4) {
          __m512i lo[NT], hi[NT];
#pragma GCC unroll 4
          for (int t = 0; t < NT; ++t) {
            const __m512i v = _mm512_loadu_si512(qu + s * kStepBytes + t * kUnitBytes);
            lo[t] = _mm512_and_si512(v, low4);
            hi[t] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
          }
#pragma GCC unroll 16
          for (int r = 0; r < MR; ++r) {
            const __m512i xa = _mm512_set1_epi32(load4(xr[r] + 8 * s));
            const __m512i xb = _mm512_set1_epi32(load4(xr[r] + 8 * s + 4));
#pragma GCC unroll 4
            for (int t = 0; t < NT; ++t) {
              dpbusd(isum[r][t], lo[t], xa);
              dpbusd(isum[r][t], hi[t], xb);
            }
          }
        } else {
          __m512i wv[NT];
#pragma GCC unroll 4
          for (int t = 0; t < NT; ++t)
            wv[t] = _mm512_xor_si512(_mm512_loadu_si512(qu + s * kStepBytes + t * kUnitBytes), flip);
#pragma GCC unroll 16
          for (int r = 0; r < MR; ++r) {
            const __m512i xa = _mm512_set1_epi32(load4(xr[r] + 4 * s));
#pragma GCC unroll 4
            for (int t = 0; t < NT; ++t) dpbusd(isum[r][t], wv[t], xa);
          }
        }
      }
      // The block's float step (the same operations as the scalar path, lane by lane).
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const int64_t at_x = (r0 + r) * x.groups + g;
        const __m512 dg = _mm512_set1_ps(x.d[at_x]);
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
          float* a = acc[r][u0 + t];
          if constexpr (INT4) {
            const int64_t at = w.group_at(b0 + u0 + t, g);
            const __m512 xs = _mm512_set1_ps(static_cast<float>(x.xsum[at_x]));
            const __m512 p = _mm512_mul_ps(xs, _mm512_loadu_ps(w.minimum + at));
            const __m512 tt = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][t]), _mm512_loadu_ps(w.scale + at), p);
            _mm512_store_ps(a, _mm512_fmadd_ps(tt, dg, _mm512_load_ps(a)));
          } else {
            const __m512i offset = _mm512_set1_epi32(128 * x.xsum[at_x]);
            const __m512 isf = _mm512_cvtepi32_ps(_mm512_sub_epi32(isum[r][t], offset));
            _mm512_store_ps(a, _mm512_fmadd_ps(isf, dg, _mm512_load_ps(a)));
          }
        }
      }
    }
  }
  for (int r = 0; r < MR; ++r) std::memcpy(y + (r0 + r) * ldy + b0 * kBlock, acc[r], sizeof(acc[r]));
}

// ---------------------------------------------------------------------------------------------
// AVX2 path: a block is two __m256i (channels 0..7, 8..15), each 8 channels x 4 inputs.
// vpmaddubsw (unsigned x signed, pairs into int16) then vpmaddwd by ones (pairs into int32)
// gives the 4-input dot products; int16 never saturates: int4, 2 * 15 * 127 = 3810; int8 uses
// |q| times sign(q) * qx (vpsignb), 2 * 127 * 127 = 32258 < 32767.
// ---------------------------------------------------------------------------------------------

constexpr int tile_blocks_avx2(int mr) { return mr <= 1 ? 2 : 1; }

// As tile_vnni: the tile's blocks NT at a time per group, float accumulators in memory.
template <int MR, int NT, bool INT4>
QA_AVX2 void tile_avx2(const QRows& x, int64_t r0, const Weights& w, int64_t b0, float* y, int64_t ldy) {
  const int64_t per_step = INT4 ? 8 : 4;
  const uint8_t* q = w.unit(b0, 0);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = x.qx + (r0 + r) * x.ldx;
  alignas(32) float acc[MR][kTileBlocks][kBlock] = {};

  for (int64_t g = 0; g < w.groups; ++g) {
    const int64_t s0 = g * w.group / per_step, s1 = std::min(w.steps, (g + 1) * w.group / per_step);
    for (int u0 = 0; u0 < kTileBlocks; u0 += NT) {
      const uint8_t* qu = q + u0 * kUnitBytes;
      __m256i isum[MR][NT][2];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t) isum[r][t][0] = isum[r][t][1] = _mm256_setzero_si256();
      for (int64_t s = s0; s < s1; ++s) {
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t)
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            const __m256i v =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qu + s * kStepBytes + t * kUnitBytes + 32 * h));
            if constexpr (INT4) {
              const __m256i lo = _mm256_and_si256(v, low4);
              const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
#pragma GCC unroll 8
              for (int r = 0; r < MR; ++r) {
                const __m256i xa = _mm256_set1_epi32(load4(xr[r] + 8 * s));
                const __m256i xb = _mm256_set1_epi32(load4(xr[r] + 8 * s + 4));
                // Two int16 pair sums (each |.| <= 2 * 15 * 127) added in int16 stay <= 7620.
                const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb));
                isum[r][t][h] = _mm256_add_epi32(isum[r][t][h], _mm256_madd_epi16(pairs, ones));
              }
            } else {
              const __m256i mag = _mm256_abs_epi8(v);
#pragma GCC unroll 8
              for (int r = 0; r < MR; ++r) {
                const __m256i xa = _mm256_sign_epi8(_mm256_set1_epi32(load4(xr[r] + 4 * s)), v);
                isum[r][t][h] =
                    _mm256_add_epi32(isum[r][t][h], _mm256_madd_epi16(_mm256_maddubs_epi16(mag, xa), ones));
              }
            }
          }
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const int64_t at_x = (r0 + r) * x.groups + g;
        const __m256 dg = _mm256_set1_ps(x.d[at_x]);
        const __m256 xs = _mm256_set1_ps(static_cast<float>(x.xsum[at_x]));
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t)
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            float* a = &acc[r][u0 + t][8 * h];
            const __m256 isf = _mm256_cvtepi32_ps(isum[r][t][h]);
            if constexpr (INT4) {
              const int64_t at = w.group_at(b0 + u0 + t, g) + 8 * h;
              const __m256 p = _mm256_mul_ps(xs, _mm256_loadu_ps(w.minimum + at));
              const __m256 tt = _mm256_fmadd_ps(isf, _mm256_loadu_ps(w.scale + at), p);
              _mm256_store_ps(a, _mm256_fmadd_ps(tt, dg, _mm256_load_ps(a)));
            } else {
              _mm256_store_ps(a, _mm256_fmadd_ps(isf, dg, _mm256_load_ps(a)));
            }
          }
      }
    }
  }
  for (int r = 0; r < MR; ++r) std::memcpy(y + (r0 + r) * ldy + b0 * kBlock, acc[r], sizeof(acc[r]));
}

#endif  // QA_X86

// Rows per pass over a tile: 5 on AVX-512 (4 blocks at once, each weight vector used 5 times per
// broadcast pair; wider passes of 1 block used as many broadcasts as dot products, and a width-16
// forward of the 1.5B model cost 358 ms against 103 for width 5); 4 on AVX2 (16 registers).
#ifndef QA_VNNI_ROWS
#define QA_VNNI_ROWS 5  // (a build flag only so that benchmarks can compare widths side by side)
#endif
int max_rows(Isa isa) { return isa == kAvx2 ? 4 : (isa == kAvx512 ? QA_VNNI_ROWS : kMaxRows); }

// Rows [r0, r0 + mr) times the tile of 4 blocks starting at b0, on the chosen path.
void run_tile(Isa isa, const QRows& x, int64_t r0, int mr, const Weights& w, int64_t b0, float* y, int64_t ldy) {
#if QA_X86
#define QA_CASE(PATH, R)                                                                      \
  case R: {                                                                                   \
    constexpr int NT = tile_blocks_##PATH(R);                                                 \
    return w.int4 ? tile_##PATH<R, NT, true>(x, r0, w, b0, y, ldy) : tile_##PATH<R, NT, false>(x, r0, w, b0, y, ldy); \
  }
  if (isa == kAvx512) {
    switch (mr) {
      QA_CASE(vnni, 1) QA_CASE(vnni, 2) QA_CASE(vnni, 3) QA_CASE(vnni, 4) QA_CASE(vnni, 5) QA_CASE(vnni, 6)
      QA_CASE(vnni, 7) QA_CASE(vnni, 8) QA_CASE(vnni, 9) QA_CASE(vnni, 10) QA_CASE(vnni, 11) QA_CASE(vnni, 12)
      QA_CASE(vnni, 13) QA_CASE(vnni, 14) QA_CASE(vnni, 15) QA_CASE(vnni, 16)
    }
  } else if (isa == kAvx2) {
    switch (mr) { QA_CASE(avx2, 1) QA_CASE(avx2, 2) QA_CASE(avx2, 3) QA_CASE(avx2, 4) }
  }
#undef QA_CASE
#endif
  for (int64_t b = b0; b < b0 + kTileBlocks; ++b) block_scalar(x, r0, mr, w, b, y, ldy);
}

// The most capable path this CPU runs: AVX-512 here means AVX-512 F + BW + VNNI.
Isa best_isa() {
#if QA_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vnni"))
    return kAvx512;
  if (avx2) return kAvx2;
#endif
  return kScalar;
}

// Each row's activations quantized in blocks of `group` inputs (the same scalar code on every
// path): qx [M][Kp] (zero padded), d [M][groups], xsum [M][groups].
void quantize_rows(const float* xp, int64_t M, int64_t K, int64_t Kp, int64_t group, int64_t groups, int8_t* qx,
                   float* d, int32_t* xsum) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = xp + m * K;
    int8_t* out = qx + m * Kp;
    std::fill(out, out + Kp, 0);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * group, k1 = std::min(K, k0 + group);
      float amax = 0.0f;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(row[k]));
      const float dg = amax / 127.0f;
      const float inv = dg > 0.0f ? 1.0f / dg : 0.0f;
      int32_t sum = 0;
      for (int64_t k = k0; k < k1; ++k) {
        // nearbyint: round half to even; |x * inv| <= 127 up to rounding, clamped for safety.
        const float v = std::nearbyint(row[k] * inv);
        const int32_t qv = static_cast<int32_t>(std::min(127.0f, std::max(-127.0f, v)));
        out[k] = static_cast<int8_t>(qv);
        sum += qv;
      }
      d[m * groups + g] = dg;
      xsum[m * groups + g] = sum;
    }
  }
}

torch::Tensor run(const torch::Tensor& x, const Weights& w, int64_t blocks_n, const c10::optional<torch::Tensor>& bias,
                  int64_t n_out, Isa isa) {
  const int64_t M = x.size(0), K = x.size(1);
  auto y = torch::empty({M, blocks_n * kBlock}, x.options().dtype(torch::kFloat32));
  if (M == 0 || blocks_n == 0) return y;
  const int64_t Kp = w.steps * (w.int4 ? 8 : 4);
  auto qx = torch::empty({M, Kp}, x.options().dtype(torch::kInt8));
  auto d = torch::empty({M, w.groups}, x.options().dtype(torch::kFloat32));
  auto xsum = torch::empty({M, w.groups}, x.options().dtype(torch::kInt32));
  quantize_rows(x.data_ptr<float>(), M, K, Kp, w.group, w.groups, qx.data_ptr<int8_t>(), d.data_ptr<float>(),
                xsum.data_ptr<int32_t>());
  const QRows rows{qx.data_ptr<int8_t>(), Kp, d.data_ptr<float>(), xsum.data_ptr<int32_t>(), w.groups};

  const int64_t ldy = y.size(1);
  float* yp = y.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const float* col_scale = w.int4 ? nullptr : w.scale;
  const auto splits = specdec_common::row_splits(M, max_rows(isa));
  const int64_t tiles = (blocks_n + kTileBlocks - 1) / kTileBlocks;
  at::parallel_for(0, tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t b0 = tile * kTileBlocks;
      for (const auto& [r0, mr] : splits) run_tile(isa, rows, r0, mr, w, b0, yp, ldy);
      specdec_common::epilogue(yp, ldy, M, b0 * kBlock, std::min(n_out, (b0 + kTileBlocks) * kBlock), col_scale, bp);
    }
  });
  return y;
}

Isa checked_isa(int64_t isa) {
  TORCH_CHECK(isa >= kScalar && isa <= kAvx512, "qlinear_a8: unknown instruction-set path ", isa);
  // A CPU with AVX-512 but no VNNI asked for "avx512" runs the AVX2 path: the bits are the same.
  return static_cast<Isa>(std::min<int64_t>(isa, best_isa()));
}



void check_common(const torch::Tensor& q, int64_t blocks_n, const c10::optional<torch::Tensor>& bias, int64_t n_out) {
  TORCH_CHECK(q.dim() == 5 && q.size(2) == kTileBlocks && q.size(3) == kBlock && q.size(4) == 4 && q.is_contiguous(),
              "qlinear_a8: weights must be a contiguous [N/64, steps, 4, 16, 4] tensor");
  TORCH_CHECK(n_out > (blocks_n - kTileBlocks) * kBlock && n_out <= blocks_n * kBlock, "qlinear_a8: bad n_out ", n_out);
  specdec_common::check_bias(bias, n_out, "qlinear_a8");
}

}  // namespace

// q: int8 [N64 / 64, ceil(K / 4), 4, 16, 4] in -127..127; scale float32 [N64]; activation blocks of
// `group` inputs (a multiple of 4).
torch::Tensor int8a8_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale, int64_t group,
                            const c10::optional<torch::Tensor>& bias, int64_t n_out, int64_t isa) {
  TORCH_CHECK(q.scalar_type() == torch::kInt8, "qlinear_a8: int8 weights must be int8");
  const int64_t blocks_n = q.size(0) * kTileBlocks, K = x.dim() ? x.size(-1) : 0;
  check_common(q, blocks_n, bias, n_out);
  TORCH_CHECK(q.size(1) == (K + 3) / 4, "qlinear_a8: int8 weights hold ", 4 * q.size(1), " inputs, x has ", K);
  TORCH_CHECK(group >= 4 && group % 4 == 0, "qlinear_a8: int8 activation block must be a positive multiple of 4");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.is_contiguous() && scale.numel() == blocks_n * kBlock,
              "qlinear_a8: int8 scale must be a contiguous float32 tensor of ", blocks_n * kBlock, " elements");
  const auto rows = specdec_common::as_rows(x, K, "qlinear_a8");
  const int64_t groups = std::max<int64_t>(1, (K + group - 1) / group);
  const Weights w{false, static_cast<const uint8_t*>(q.data_ptr()), q.size(1), scale.data_ptr<float>(), nullptr, group,
                  groups};
  return specdec_common::finish(x, run(rows, w, blocks_n, bias, n_out, checked_isa(isa)), n_out);
}

// q: uint8 [N64 / 64, ceil(K / 8), 4, 16, 4] (two nibbles a byte); scale, minimum float32
// [N64 / 64, groups, 4, 16];
// group: inputs per group, a multiple of 8 (also the activation block).
torch::Tensor int4a8_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                            const torch::Tensor& minimum, int64_t group, const c10::optional<torch::Tensor>& bias,
                            int64_t n_out, int64_t isa) {
  TORCH_CHECK(q.scalar_type() == torch::kUInt8, "qlinear_a8: int4 weights must be uint8");
  const int64_t blocks_n = q.size(0) * kTileBlocks, K = x.dim() ? x.size(-1) : 0;
  check_common(q, blocks_n, bias, n_out);
  TORCH_CHECK(q.size(1) == (K + 7) / 8, "qlinear_a8: int4 weights hold ", 8 * q.size(1), " inputs, x has ", K);
  TORCH_CHECK(group >= 8 && group % 8 == 0, "qlinear_a8: int4 group size must be a positive multiple of 8");
  const int64_t groups = std::max<int64_t>(1, (K + group - 1) / group);
  for (const auto* t : {&scale, &minimum})
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->is_contiguous() &&
                    t->sizes() == torch::IntArrayRef({q.size(0), groups, kTileBlocks, kBlock}),
                "qlinear_a8: int4 scale and minimum must be contiguous float32 [", q.size(0), ", ", groups, ", 4, 16]");
  const auto rows = specdec_common::as_rows(x, K, "qlinear_a8");
  const Weights w{true, q.data_ptr<uint8_t>(), q.size(1), scale.data_ptr<float>(), minimum.data_ptr<float>(), group,
                  groups};
  return specdec_common::finish(x, run(rows, w, blocks_n, bias, n_out, checked_isa(isa)), n_out);
}

int64_t best_isa_a8() { return static_cast<int64_t>(best_isa()); }

}  // namespace specdec_a8
