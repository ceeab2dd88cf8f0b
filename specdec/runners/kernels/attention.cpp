// Batch-invariant attention for decode steps and verification forwards (up to 17 new tokens).
//
//     out[b, i, h, :] = softmax_j(scaling * q[b, h, i] . k[b, h / G, j] + mask[b, h, i, j]) @ v[b, h / G, :]
//
// over the keys query i may see: the cache up to its own position (j < L - (q - 1 - i)). Each
// (batch, head, query) is computed on its own by the same code, whatever the other queries, so a
// verification forward gives query i the bits of the one-token decode step at that position.
// Before this kernel, attention ran one SDPA call per query row (about 100 us each: 28 layers x 5
// rows cost 14 ms of a 100 ms verification forward); now one call per layer does every row.
//
// The operations, the same on the AVX2 and the scalar path (so they give the same bits):
//   dot(a, b) over d: 8 partial sums, lane l accumulating a[8c + l] * b[8c + l] by fma in order of
//   c, then the tail d % 8 into lanes 0.., then ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7));
//   s_j = dot(q, k_j) * scaling (+ mask); m = max_j s_j; e_j = exp(s_j - m) by the polynomial below;
//   sum = e_0 + e_1 + ... in order; out = (sum_j e_j * v_j accumulated by fma in order of j) * (1 / sum).
// float32 throughout; -ffp-contract=off keeps every product and sum rounded as written.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define AT_X86 1
#include <immintrin.h>
#define AT_AVX2 __attribute__((target("avx2,fma")))
#else
#define AT_X86 0
#endif

namespace specdec_attention {
namespace {

constexpr int kLanes = 8;

// exp(x) for x <= 0 (softmax arguments), Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2,
// exp(r) by a degree-6 polynomial, times 2^n. About 1 ulp; the same operations on both paths.
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
constexpr float kMinArg = -87.0f;  // below: exp underflows to 0 here (2^-126 is the smallest normal)

float exp_scalar(float x) {
  if (x < kMinArg) return 0.0f;
  const float n = std::nearbyint(x * kLog2e);
  float r = std::fma(n, -kLn2Hi, x);
  r = std::fma(n, -kLn2Lo, r);
  float p = kP0;
  p = std::fma(p, r, kP1);
  p = std::fma(p, r, kP2);
  p = std::fma(p, r, kP3);
  p = std::fma(p, r, kP4);
  p = std::fma(p, r, kP5);
  const float r2 = r * r;
  const float y = std::fma(p, r2, r) + 1.0f;
  return std::ldexp(y, static_cast<int>(n));  // exact scaling (n >= -126 here)
}

float reduce8(const float* s) { return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])); }

float dot_scalar(const float* a, const float* b, int64_t d) {
  float s[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= d; c += kLanes)
    for (int l = 0; l < kLanes; ++l) s[l] = std::fma(a[c + l], b[c + l], s[l]);
  for (int l = 0; c + l < d; ++l) s[l] = std::fma(a[c + l], b[c + l], s[l]);
  return reduce8(s);
}

// One query row: scores into `e` (length n), then out[0 .. d) (scalar path).
void row_scalar(const float* q, const float* k, const float* v, int64_t n, int64_t d, float scaling, const float* mask,
                float* e, float* out) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    float s = dot_scalar(q, k + j * d, d) * scaling;
    if (mask) s = s + mask[j];
    e[j] = s;
    m = std::max(m, s);
  }
  std::fill(out, out + d, 0.0f);
  if (m == -std::numeric_limits<float>::infinity()) return;  // every key hidden: zeros, not NaN
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    e[j] = exp_scalar(e[j] - m);
    sum = sum + e[j];
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < d; ++c) out[c] = std::fma(e[j], v[j * d + c], out[c]);
  const float inv = 1.0f / sum;
  for (int64_t c = 0; c < d; ++c) out[c] = out[c] * inv;
}

#if AT_X86
AT_AVX2 float dot_avx2(const float* a, const float* b, int64_t d) {
  __m256 acc = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + kLanes <= d; c += kLanes) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc);
  alignas(32) float s[kLanes];
  _mm256_store_ps(s, acc);
  for (int l = 0; c + l < d; ++l) s[l] = std::fma(a[c + l], b[c + l], s[l]);
  return reduce8(s);
}

AT_AVX2 __m256 exp_avx2(__m256 x) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Hi), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
  // 2^n as a float (n in -126 .. 0 here: x <= 0 and x >= kMinArg), times y: exact.
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 scaled = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
  return _mm256_blendv_ps(scaled, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(kMinArg), _CMP_LT_OQ));
}

AT_AVX2 void row_avx2(const float* q, const float* k, const float* v, int64_t n, int64_t d, float scaling,
                      const float* mask, float* e, float* out) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    float s = dot_avx2(q, k + j * d, d) * scaling;
    if (mask) s = s + mask[j];
    e[j] = s;
    m = std::max(m, s);
  }
  std::fill(out, out + d, 0.0f);
  if (m == -std::numeric_limits<float>::infinity()) return;
  int64_t j = 0;
  const __m256 mv = _mm256_set1_ps(m);
  for (; j + kLanes <= n; j += kLanes) _mm256_storeu_ps(e + j, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(e + j), mv)));
  for (; j < n; ++j) e[j] = exp_scalar(e[j] - m);
  float sum = 0.0f;
  for (j = 0; j < n; ++j) sum = sum + e[j];
  int64_t c = 0;
  for (; c + 4 * kLanes <= d; c += 4 * kLanes) {  // 4 independent accumulators per pass over the keys
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (j = 0; j < n; ++j) {
      const __m256 ej = _mm256_set1_ps(e[j]);
      const float* vj = v + j * d + c;
      a0 = _mm256_fmadd_ps(ej, _mm256_loadu_ps(vj), a0);
      a1 = _mm256_fmadd_ps(ej, _mm256_loadu_ps(vj + 8), a1);
      a2 = _mm256_fmadd_ps(ej, _mm256_loadu_ps(vj + 16), a2);
      a3 = _mm256_fmadd_ps(ej, _mm256_loadu_ps(vj + 24), a3);
    }
    _mm256_storeu_ps(out + c, a0);
    _mm256_storeu_ps(out + c + 8, a1);
    _mm256_storeu_ps(out + c + 16, a2);
    _mm256_storeu_ps(out + c + 24, a3);
  }
  for (; c + kLanes <= d; c += kLanes) {
    __m256 a = _mm256_setzero_ps();
    for (j = 0; j < n; ++j) a = _mm256_fmadd_ps(_mm256_set1_ps(e[j]), _mm256_loadu_ps(v + j * d + c), a);
    _mm256_storeu_ps(out + c, a);
  }
  for (; c < d; ++c)
    for (j = 0; j < n; ++j) out[c] = std::fma(e[j], v[j * d + c], out[c]);
  const float inv = 1.0f / sum;
  for (c = 0; c < d; ++c) out[c] = out[c] * inv;
}

bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

}  // namespace

// query [B, H, q, d], key / value [B, Hkv, L, d] (H a multiple of Hkv), float32; mask: None or
// an additive float32 mask broadcastable as [B or 1, H or 1, q, L]; use_avx2: the path (the CPU
// must have AVX2 + FMA). Returns [B, q, H, d] (transformers' attention output layout).
torch::Tensor rowwise_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                const c10::optional<torch::Tensor>& mask, double scaling, bool use_avx2) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4, "attention: 4-d query, key, value expected");
  for (const auto* t : {&query, &key, &value})
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->device().is_cpu(), "attention: float32 CPU tensors expected");
  const int64_t B = query.size(0), H = query.size(1), Q = query.size(2), d = query.size(3);
  const int64_t Hkv = key.size(1), L = key.size(2);
  TORCH_CHECK(key.size(0) == B && value.sizes() == key.sizes() && key.size(3) == d && Hkv > 0 && H % Hkv == 0,
              "attention: key / value shapes do not match the query");
  TORCH_CHECK(Q <= L, "attention: more queries than keys");
#if AT_X86
  TORCH_CHECK(!use_avx2 || has_avx2(), "attention: this CPU has no AVX2 + FMA");
#else
  TORCH_CHECK(!use_avx2, "attention: AVX2 path on a non-x86 CPU");
#endif
  const auto qc = query.contiguous(), kc = key.contiguous(), vc = value.contiguous();
  torch::Tensor mc;
  int64_t mask_b = 0, mask_h = 0;  // strides (elements) of the mask's batch and head (0: broadcast)
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == torch::kFloat32 && mask->dim() == 4 && mask->size(2) == Q && mask->size(3) == L,
                "attention: the mask must be float32 [B or 1, H or 1, q, L]");
    mc = mask->contiguous();
    mask_h = mc.size(1) == 1 ? 0 : Q * L;
    mask_b = mc.size(0) == 1 ? 0 : mc.size(1) * Q * L;
  }
  auto out = torch::empty({B, Q, H, d}, query.options());
  const float* qp = qc.data_ptr<float>();
  const float* kp = kc.data_ptr<float>();
  const float* vp = vc.data_ptr<float>();
  const float* mp = mask.has_value() ? mc.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const float scale = static_cast<float>(scaling);
  const int64_t group = H / Hkv;
  at::parallel_for(0, B * H * Q, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> e(L);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (H * Q), h = (item / Q) % H, i = item % Q;
      const int64_t visible = L - (Q - 1 - i);  // causal: the cache up to query i's own position
      const float* qrow = qp + ((b * H + h) * Q + i) * d;
      const float* krows = kp + (b * Hkv + h / group) * L * d;
      const float* vrows = vp + (b * Hkv + h / group) * L * d;
      const float* mrow = mp ? mp + b * mask_b + h * mask_h + i * L : nullptr;
      float* orow = op + ((b * Q + i) * H + h) * d;
#if AT_X86
      if (use_avx2) {
        row_avx2(qrow, krows, vrows, visible, d, scale, mrow, e.data(), orow);
        continue;
      }
#endif
      row_scalar(qrow, krows, vrows, visible, d, scale, mrow, e.data(), orow);
    }
  });
  return out;
}

bool attention_avx2_available() {
#if AT_X86
  return has_avx2();
#else
  return false;
#endif
}

}  // namespace specdec_attention
