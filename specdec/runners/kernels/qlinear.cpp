// Weight-only quantized linear layers for CPU decoding and speculative verification.
//
//     y[M, N] = x[M, K] @ dequant(W)[N, K]^T (+ bias[N])      x float32 (or bf16, widened exactly)
//
// Two weight formats (both packed by qlinear.py):
//   int8: symmetric, one float32 scale per output channel:  W[n, k] = scale[n] * q[n, k]
//   int4: asymmetric groups of G inputs, a float32 scale and minimum per (output, group):
//         W[n, k] = fma(q[n, k], scale[n, g], min[n, g]), q in 0..15, g = k / G
//         (llama.cpp's Q4_0 / Q4_1 map onto it exactly: min = -8 * scale, or min = m).
//
// Layout: output channels are packed in blocks of kBlock = 16, each block a run of 16-byte rows
// holding the 16 channels side by side: int8, one row per input k; int4, one row per pair of
// inputs (2p, 2p + 1), byte j = channel j with input 2p in the low nibble and 2p + 1 in the high
// one. Int4 scales and minima are [N / 16][groups][16] float32; G is even. N is padded to a
// multiple of 16 with zero weights and zero scales.
//
// Why this layout: one vector holds 16 *different outputs* at the same k, so each output
// y[m, n] is accumulated in its own lane as the plain sequence
//     acc = 0; for k = 0 .. K-1: acc = fma(x[m, k], w[n, k], acc)
// followed by (int8) acc * scale[n], then + bias[n]. There is no horizontal reduction and no
// split of K, so a row's result depends on nothing but that row: not on M, not on the other rows,
// not on how rows and outputs are tiled or which thread computes them. Every instruction-set
// path (AVX-512, AVX2 + FMA, scalar with std::fma) performs exactly this sequence of correctly
// rounded operations, so all three give bit-identical results, on any CPU.
//
// Speed: each weight vector is loaded and dequantized once and then used by every row of a row
// block (up to 16 rows on AVX-512, 6 on AVX2: what fits the register file); for more rows the
// block's weights are re-read from cache, not from memory, because all row blocks of a 64-output
// tile are done before the next tile. Work is split over torch's intra-op threads (ATen's OpenMP
// pool) by tiles of 64 outputs; each output is computed by one thread from start to finish.
//
// Build flags (qlinear.py): -O3 -ffp-contract=off, no -ffast-math, no -march: the AVX2 and
// AVX-512 functions carry target attributes and run only where the CPU has those instructions.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define QL_X86 1
#include <immintrin.h>
#define QL_AVX2 __attribute__((target("avx2,fma")))
#define QL_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define QL_X86 0
#endif

namespace {

constexpr int64_t kBlock = 16;      // output channels per packed block
constexpr int64_t kTileBlocks = 4;  // blocks per unit of parallel work (64 outputs)
constexpr int kMaxRowsAvx512 = 16;  // rows sharing one pass over the weights, by path
constexpr int kMaxRowsAvx2 = 6;
constexpr int kMaxRowsScalar = 16;

enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The packed weights, as raw pointers (validated in the entry points).
struct Weights {
  bool int4;             // format: int8 when false
  const uint8_t* q;      // [Nb][rows][16] bytes (int8 values, or two int4 nibbles)
  int64_t rows;          // int8: K; int4: ceil(K / 2)
  const float* scale;    // int8: [Nb * 16]; int4: [Nb][groups][16]
  const float* minimum;  // int4 only: [Nb][groups][16]
  int64_t K;             // inputs
  int64_t group;         // int4 group size (inputs, even); K for int8
  int64_t groups;        // ceil(K / group)
};

// The rows of one row block: its inputs, interleaved by k (x[k * mr + r] is row r's input k, so
// a kernel addresses all rows from one pointer), and its output rows (float32; the raw
// accumulators are stored there, then finished by the epilogue).
struct Rows {
  const float* x;  // [K][mr]
  float* y;
  int64_t ldy;  // y row stride (elements)
};

// ---------------------------------------------------------------------------------------------
// Scalar path: the reference sequence of operations, also what runs on CPUs without AVX2.
// ---------------------------------------------------------------------------------------------

// Rows [0, mr) of `rows` times packed block `b`, accumulators written to y[:, 16 b .. 16 b + 16).
void block_scalar(const Rows& rows, int mr, const Weights& w, int64_t b) {
  float acc[kMaxRowsScalar][kBlock] = {};
  float wk[kBlock];
  const uint8_t* block = w.q + b * w.rows * kBlock;
  for (int64_t g = 0, k0 = 0; k0 < w.K; ++g, k0 += w.group) {
    const int64_t k1 = std::min(w.K, k0 + w.group);
    for (int64_t k = k0; k < k1; ++k) {
      if (w.int4) {
        const uint8_t* q = block + (k / 2) * kBlock;
        const float* s = w.scale + (b * w.groups + g) * kBlock;
        const float* mn = w.minimum + (b * w.groups + g) * kBlock;
        for (int j = 0; j < kBlock; ++j) {
          const int nibble = k % 2 ? q[j] >> 4 : q[j] & 0x0F;
          wk[j] = std::fma(static_cast<float>(nibble), s[j], mn[j]);
        }
      } else {
        const int8_t* q = reinterpret_cast<const int8_t*>(block) + k * kBlock;
        for (int j = 0; j < kBlock; ++j) wk[j] = static_cast<float>(q[j]);
      }
      for (int r = 0; r < mr; ++r) {
        const float xv = rows.x[k * mr + r];
        for (int j = 0; j < kBlock; ++j) acc[r][j] = std::fma(xv, wk[j], acc[r][j]);
      }
    }
  }
  for (int r = 0; r < mr; ++r)
    for (int j = 0; j < kBlock; ++j) rows.y[r * rows.ldy + b * kBlock + j] = acc[r][j];
}

void blocks_scalar(const Rows& rows, int mr, const Weights& w, int64_t b0, int64_t nb) {
  for (int64_t b = b0; b < b0 + nb; ++b) block_scalar(rows, mr, w, b);
}

#if QL_X86
// ---------------------------------------------------------------------------------------------
// AVX-512 path: one __m512 = one block's 16 outputs. A tile is MR rows x NT blocks of
// accumulators kept in registers (MR * NT <= 16 of the 32 zmm registers).
// ---------------------------------------------------------------------------------------------

constexpr int tile_blocks_avx512(int mr) { return mr <= 4 ? 4 : (mr <= 8 ? 2 : 1); }

// acc[r][t] = fma(x[k, r], wk[t], acc[r][t]) for the MR rows (xk = the interleaved inputs at k).
template <int MR, int NT>
QL_AVX512 __attribute__((always_inline)) inline void fma_rows_avx512(__m512 (&acc)[MR][NT], const __m512 (&wk)[NT],
                                                                      const float* xk) {
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    const __m512 xv = _mm512_set1_ps(xk[r]);
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_fmadd_ps(xv, wk[t], acc[r][t]);
  }
}

template <int MR, int NT, bool INT4>
QL_AVX512 void tile_avx512(const Rows& rows, const Weights& w, int64_t b0) {
  const uint8_t* q = w.q + b0 * w.rows * kBlock;  // block b0 + t starts at q + t * w.rows * 16
  const int64_t block_stride = w.rows * kBlock;
  __m512 acc[MR][NT];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  if constexpr (!INT4) {
    for (int64_t k = 0; k < w.K; ++k) {
      __m512 wk[NT];
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t)
        wk[t] = _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + t * block_stride + k * kBlock))));
      fma_rows_avx512<MR, NT>(acc, wk, rows.x + k * MR);
    }
  } else {
    const __m512i low4 = _mm512_set1_epi32(0x0F);
    for (int64_t g = 0, k0 = 0; k0 < w.K; ++g, k0 += w.group) {
      const int64_t k1 = std::min(w.K, k0 + w.group);
      __m512 s[NT], mn[NT];
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        s[t] = _mm512_loadu_ps(w.scale + ((b0 + t) * w.groups + g) * kBlock);
        mn[t] = _mm512_loadu_ps(w.minimum + ((b0 + t) * w.groups + g) * kBlock);
      }
      // Inputs k (even) and k + 1 share 16 bytes: byte j = channel j, k in the low nibble.
      for (int64_t k = k0; k < k1; k += 2) {
        __m512 even[NT], odd[NT];
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
          const __m512i bytes = _mm512_cvtepu8_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + t * block_stride + (k / 2) * kBlock)));
          even[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(bytes, low4)), s[t], mn[t]);
          odd[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), s[t], mn[t]);
        }
        fma_rows_avx512<MR, NT>(acc, even, rows.x + k * MR);
        if (k + 1 < k1) fma_rows_avx512<MR, NT>(acc, odd, rows.x + (k + 1) * MR);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) _mm512_storeu_ps(rows.y + r * rows.ldy + (b0 + t) * kBlock, acc[r][t]);
}

template <int MR, bool INT4>
void blocks_avx512(const Rows& rows, const Weights& w, int64_t b0, int64_t nb) {
  constexpr int NT = tile_blocks_avx512(MR);
  int64_t b = b0;
  for (; b + NT <= b0 + nb; b += NT) tile_avx512<MR, NT, INT4>(rows, w, b);
  for (; b < b0 + nb; ++b) tile_avx512<MR, 1, INT4>(rows, w, b);
}

// ---------------------------------------------------------------------------------------------
// AVX2 path: a block's 16 outputs are two __m256 (channels 0..7 and 8..15). A tile is MR rows x
// NT blocks (MR * NT * 2 <= 12 of the 16 ymm registers).
// ---------------------------------------------------------------------------------------------

constexpr int tile_blocks_avx2(int mr) { return mr <= 2 ? 2 : 1; }

template <int MR, int NT>
QL_AVX2 __attribute__((always_inline)) inline void fma_rows_avx2(__m256 (&acc)[MR][NT][2], const __m256 (&wk)[NT][2],
                                                                  const float* xk) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const __m256 xv = _mm256_broadcast_ss(xk + r);
#pragma GCC unroll 2
    for (int t = 0; t < NT; ++t) {
      acc[r][t][0] = _mm256_fmadd_ps(xv, wk[t][0], acc[r][t][0]);
      acc[r][t][1] = _mm256_fmadd_ps(xv, wk[t][1], acc[r][t][1]);
    }
  }
}

template <int MR, int NT, bool INT4>
QL_AVX2 void tile_avx2(const Rows& rows, const Weights& w, int64_t b0) {
  const uint8_t* q = w.q + b0 * w.rows * kBlock;
  const int64_t block_stride = w.rows * kBlock;
  __m256 acc[MR][NT][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int t = 0; t < NT; ++t) acc[r][t][0] = acc[r][t][1] = _mm256_setzero_ps();
  if constexpr (!INT4) {
    for (int64_t k = 0; k < w.K; ++k) {
      __m256 wk[NT][2];
#pragma GCC unroll 2
      for (int t = 0; t < NT; ++t)
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h)
          wk[t][h] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + t * block_stride + k * kBlock + 8 * h))));
      fma_rows_avx2<MR, NT>(acc, wk, rows.x + k * MR);
    }
  } else if constexpr (MR == 1) {
    // One row: dequantize in registers, two inputs per 16-byte row of the block.
    const __m256i low4 = _mm256_set1_epi32(0x0F);
    for (int64_t g = 0, k0 = 0; k0 < w.K; ++g, k0 += w.group) {
      const int64_t k1 = std::min(w.K, k0 + w.group);
      __m256 s[NT][2], mn[NT][2];
#pragma GCC unroll 2
      for (int t = 0; t < NT; ++t)
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          s[t][h] = _mm256_loadu_ps(w.scale + ((b0 + t) * w.groups + g) * kBlock + 8 * h);
          mn[t][h] = _mm256_loadu_ps(w.minimum + ((b0 + t) * w.groups + g) * kBlock + 8 * h);
        }
      for (int64_t k = k0; k < k1; k += 2) {  // inputs k, k + 1: low, high nibbles of byte j
        __m256 even[NT][2], odd[NT][2];
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t)
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            const __m256i bytes = _mm256_cvtepu8_epi32(
                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + t * block_stride + (k / 2) * kBlock + 8 * h)));
            even[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(bytes, low4)), s[t][h], mn[t][h]);
            odd[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4)), s[t][h], mn[t][h]);
          }
        fma_rows_avx2<MR, NT>(acc, even, rows.x + k * MR);
        if (k + 1 < k1) fma_rows_avx2<MR, NT>(acc, odd, rows.x + (k + 1) * MR);
      }
    }
  } else {
    // More rows: dequantizing in registers next to 2 * MR * NT accumulators would spill (16 ymm
    // registers), so each chunk of kChunk inputs is dequantized into an L1 buffer first.
    constexpr int64_t kChunk = 32;
    alignas(32) float chunk[kChunk + 1][NT][kBlock];  // + 1: the unused high nibble of an odd K
    const __m256i low4 = _mm256_set1_epi32(0x0F);
    for (int64_t g = 0, k0 = 0; k0 < w.K; ++g, k0 += w.group) {
      const int64_t k1 = std::min(w.K, k0 + w.group);
      for (int64_t c0 = k0; c0 < k1; c0 += kChunk) {  // c0 is even: so are G and kChunk
        const int64_t c1 = std::min(k1, c0 + kChunk);
        for (int64_t k = c0; k < c1; k += 2) {  // inputs k, k + 1: low, high nibbles of byte j
#pragma GCC unroll 2
          for (int t = 0; t < NT; ++t)
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
              const int64_t at = ((b0 + t) * w.groups + g) * kBlock + 8 * h;
              const __m256 s = _mm256_loadu_ps(w.scale + at), mn = _mm256_loadu_ps(w.minimum + at);
              const __m256i bytes = _mm256_cvtepu8_epi32(
                  _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + t * block_stride + (k / 2) * kBlock + 8 * h)));
              _mm256_store_ps(&chunk[k - c0][t][8 * h],
                              _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(bytes, low4)), s, mn));
              _mm256_store_ps(&chunk[k + 1 - c0][t][8 * h],
                              _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4)), s, mn));
            }
        }
        for (int64_t k = c0; k < c1; ++k) {
          __m256 wk[NT][2];
#pragma GCC unroll 2
          for (int t = 0; t < NT; ++t) {
            wk[t][0] = _mm256_load_ps(&chunk[k - c0][t][0]);
            wk[t][1] = _mm256_load_ps(&chunk[k - c0][t][8]);
          }
          fma_rows_avx2<MR, NT>(acc, wk, rows.x + k * MR);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int t = 0; t < NT; ++t) {
      float* out = rows.y + r * rows.ldy + (b0 + t) * kBlock;
      _mm256_storeu_ps(out, acc[r][t][0]);
      _mm256_storeu_ps(out + 8, acc[r][t][1]);
    }
}

template <int MR, bool INT4>
void blocks_avx2(const Rows& rows, const Weights& w, int64_t b0, int64_t nb) {
  constexpr int NT = tile_blocks_avx2(MR);
  int64_t b = b0;
  for (; b + NT <= b0 + nb; b += NT) tile_avx2<MR, NT, INT4>(rows, w, b);
  for (; b < b0 + nb; ++b) tile_avx2<MR, 1, INT4>(rows, w, b);
}
#endif  // QL_X86

// Rows [0, mr) times blocks [b0, b0 + nb) on the chosen path (mr <= that path's row limit).
void blocks(Isa isa, const Rows& rows, int mr, const Weights& w, int64_t b0, int64_t nb) {
#if QL_X86
#define QL_CASE(PATH, R) \
  case R:                \
    return w.int4 ? blocks_##PATH<R, true>(rows, w, b0, nb) : blocks_##PATH<R, false>(rows, w, b0, nb);
  if (isa == kAvx512) {
    switch (mr) {
      QL_CASE(avx512, 1) QL_CASE(avx512, 2) QL_CASE(avx512, 3) QL_CASE(avx512, 4) QL_CASE(avx512, 5)
      QL_CASE(avx512, 6) QL_CASE(avx512, 7) QL_CASE(avx512, 8) QL_CASE(avx512, 9) QL_CASE(avx512, 10)
      QL_CASE(avx512, 11) QL_CASE(avx512, 12) QL_CASE(avx512, 13) QL_CASE(avx512, 14) QL_CASE(avx512, 15)
      QL_CASE(avx512, 16)
    }
  } else if (isa == kAvx2) {
    switch (mr) { QL_CASE(avx2, 1) QL_CASE(avx2, 2) QL_CASE(avx2, 3) QL_CASE(avx2, 4) QL_CASE(avx2, 5) QL_CASE(avx2, 6) }
  }
#undef QL_CASE
#endif
  blocks_scalar(rows, mr, w, b0, nb);
}

int max_rows(Isa isa) { return isa == kAvx512 ? kMaxRowsAvx512 : (isa == kAvx2 ? kMaxRowsAvx2 : kMaxRowsScalar); }

// The most capable path this CPU (and its OS) runs.
Isa best_isa() {
#if QL_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kScalar;
}

// y = x @ dequant(W)^T (+ bias); x [M, K] float32 contiguous; returns float32 [M, 16 * Nb].
torch::Tensor run(const torch::Tensor& x, const Weights& w, int64_t blocks_n, const c10::optional<torch::Tensor>& bias,
                  int64_t n_out, Isa isa) {
  const int64_t M = x.size(0), K = x.size(1);
  auto y = torch::empty({M, blocks_n * kBlock}, x.options().dtype(torch::kFloat32));
  if (M == 0 || blocks_n == 0) return y;
  const int64_t ldy = y.size(1);
  float* yp = y.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const float* col_scale = w.int4 ? nullptr : w.scale;

  // Row blocks of near-equal size, each at most the path's limit (any split gives the same bits),
  // with their inputs interleaved by k: block (r0, mr) at xi[r0 * K ...] as [K][mr].
  const auto splits = specdec_common::row_splits(M, max_rows(isa));
  auto xi = torch::empty({M * K}, x.options());
  const float* xp = x.data_ptr<float>();
  float* xip = xi.data_ptr<float>();
  for (const auto& [r0, mr] : splits)
    for (int64_t k = 0; k < K; ++k)
      for (int r = 0; r < mr; ++r) xip[r0 * K + k * mr + r] = xp[(r0 + r) * K + k];

  const int64_t tiles = (blocks_n + kTileBlocks - 1) / kTileBlocks;
  at::parallel_for(0, tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t b0 = tile * kTileBlocks;
      const int64_t nb = std::min(kTileBlocks, blocks_n - b0);
      for (const auto& [r0, mr] : splits) blocks(isa, Rows{xip + r0 * K, yp + r0 * ldy, ldy}, mr, w, b0, nb);
      // Epilogue, the same scalar operations on every path: (int8) * scale, then + bias.
      specdec_common::epilogue(yp, ldy, M, b0 * kBlock, std::min(n_out, (b0 + nb) * kBlock), col_scale, bp);
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// Entry points (called from qlinear.py, which packs the weights and picks `isa`).
// ---------------------------------------------------------------------------------------------

Isa checked_isa(int64_t isa) {
  TORCH_CHECK(isa >= kScalar && isa <= kAvx512, "qlinear: unknown instruction-set path ", isa);
  TORCH_CHECK(isa <= best_isa(), "qlinear: this CPU cannot run instruction-set path ", isa, " (best is ", best_isa(),
              ")");
  return static_cast<Isa>(isa);
}




// q: int8 [Nb, K, 16]; scale: float32 [Nb * 16]; bias: float32 [n_out] or None.
torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias, int64_t n_out, int64_t isa) {
  TORCH_CHECK(q.scalar_type() == torch::kInt8 && q.dim() == 3 && q.size(2) == kBlock && q.is_contiguous(),
              "qlinear: int8 weights must be a contiguous int8 [N/16, K, 16] tensor");
  const int64_t blocks_n = q.size(0), K = q.size(1);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.is_contiguous() && scale.numel() == blocks_n * kBlock,
              "qlinear: int8 scale must be a contiguous float32 tensor of ", blocks_n * kBlock, " elements");
  TORCH_CHECK(n_out > (blocks_n - 1) * kBlock && n_out <= blocks_n * kBlock, "qlinear: bad n_out ", n_out);
  specdec_common::check_bias(bias, n_out, "qlinear");
  const auto rows = specdec_common::as_rows(x, K, "qlinear");
  const Weights w{false, static_cast<const uint8_t*>(q.data_ptr()), K, scale.data_ptr<float>(), nullptr, K, std::max<int64_t>(K, 1), 1};
  return specdec_common::finish(x, run(rows, w, blocks_n, bias, n_out, checked_isa(isa)), n_out);
}

// q: uint8 [Nb, ceil(K / 2), 16] (two nibbles a byte), K = x's last dimension;
// scale, minimum: float32 [Nb, groups, 16]; group: inputs per group (even).
torch::Tensor int4_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                          const torch::Tensor& minimum, int64_t group, const c10::optional<torch::Tensor>& bias,
                          int64_t n_out, int64_t isa) {
  TORCH_CHECK(q.scalar_type() == torch::kUInt8 && q.dim() == 3 && q.size(2) == kBlock && q.is_contiguous(),
              "qlinear: int4 weights must be a contiguous uint8 [N/16, ceil(K/2), 16] tensor");
  const int64_t blocks_n = q.size(0), K = x.dim() ? x.size(-1) : 0;
  TORCH_CHECK(q.size(1) == (K + 1) / 2, "qlinear: int4 weights hold ", 2 * q.size(1), " inputs, x has ", K);
  TORCH_CHECK(group >= 2 && group % 2 == 0, "qlinear: int4 group size must be even and positive");
  const int64_t groups = (K + group - 1) / group;
  for (const auto* t : {&scale, &minimum})
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->is_contiguous() &&
                    t->sizes() == torch::IntArrayRef({blocks_n, groups, kBlock}),
                "qlinear: int4 scale and minimum must be contiguous float32 [", blocks_n, ", ", groups, ", 16]");
  TORCH_CHECK(n_out > (blocks_n - 1) * kBlock && n_out <= blocks_n * kBlock, "qlinear: bad n_out ", n_out);
  specdec_common::check_bias(bias, n_out, "qlinear");
  const auto rows = specdec_common::as_rows(x, K, "qlinear");
  const Weights w{true, q.data_ptr<uint8_t>(), q.size(1), scale.data_ptr<float>(), minimum.data_ptr<float>(), K, group,
                  groups};
  return specdec_common::finish(x, run(rows, w, blocks_n, bias, n_out, checked_isa(isa)), n_out);
}

}  // namespace

// The int8-activation kernels (qlinear_a8.cpp, compiled into the same extension).
namespace specdec_a8 {
torch::Tensor int8a8_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale, int64_t group,
                            const c10::optional<torch::Tensor>& bias, int64_t n_out, int64_t isa);
torch::Tensor int4a8_linear(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                            const torch::Tensor& minimum, int64_t group, const c10::optional<torch::Tensor>& bias,
                            int64_t n_out, int64_t isa);
int64_t best_isa_a8();
}  // namespace specdec_a8

// Batch-invariant attention (attention.cpp, compiled into the same extension).
namespace specdec_attention {
torch::Tensor rowwise_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                const c10::optional<torch::Tensor>& mask, double scaling, bool use_avx2);
bool attention_avx2_available();
}  // namespace specdec_attention

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Batch-invariant weight-only int8 / int4 linear kernels (see qlinear.py)";
  m.def("best_isa", []() { return static_cast<int64_t>(best_isa()); },
        "The most capable path this CPU runs: 0 scalar, 1 AVX2+FMA, 2 AVX-512");
  m.def("int8_linear", &int8_linear, "y = x @ (scale * q)^T (+ bias)", py::arg("x"), py::arg("q"), py::arg("scale"),
        py::arg("bias"), py::arg("n_out"), py::arg("isa"));
  m.def("int4_linear", &int4_linear, "y = x @ fma(q, scale, minimum)^T (+ bias), groups of `group` inputs",
        py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("minimum"), py::arg("group"), py::arg("bias"),
        py::arg("n_out"), py::arg("isa"));
  m.def("best_isa_a8", &specdec_a8::best_isa_a8,
        "The most capable int8-activation path this CPU runs: 0 scalar, 1 AVX2, 2 AVX-512 VNNI");
  m.def("int8a8_linear", &specdec_a8::int8a8_linear, "w8a8: y = x @ (scale * q)^T (+ bias), activations int8 per block",
        py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("group"), py::arg("bias"), py::arg("n_out"),
        py::arg("isa"));
  m.def("int4a8_linear", &specdec_a8::int4a8_linear, "w4a8: y = x @ fma(q, scale, minimum)^T (+ bias), int8 activations",
        py::arg("x"), py::arg("q"), py::arg("scale"), py::arg("minimum"), py::arg("group"), py::arg("bias"),
        py::arg("n_out"), py::arg("isa"));
  m.def("rowwise_attention", &specdec_attention::rowwise_attention,
        "Causal attention, each query row computed on its own: [B, H, q, d] x [B, Hkv, L, d] -> [B, q, H, d]",
        py::arg("query"), py::arg("key"), py::arg("value"), py::arg("mask"), py::arg("scaling"), py::arg("use_avx2"));
  m.def("attention_avx2_available", &specdec_attention::attention_avx2_available);
}
