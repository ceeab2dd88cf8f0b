// What qlinear.cpp and qlinear_a8.cpp share: taking x in, handing y out, and the last scalar
// step of every output (the same on every instruction-set path).
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace specdec_common {

// x [..., K] float32 or bfloat16 on the CPU -> [M, K] float32 contiguous (bf16 widens exactly).
inline torch::Tensor as_rows(const torch::Tensor& x, int64_t K, const char* who) {
  TORCH_CHECK(x.device().is_cpu(), who, ": x must be on the CPU");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16, who,
              ": x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, who, ": x's last dimension must be ", K);
  return x.reshape({-1, K}).to(torch::kFloat32).contiguous();
}

// y [M, padded N] float32 -> x's leading shape and dtype, [..., n_out].
inline torch::Tensor finish(const torch::Tensor& x, torch::Tensor y, int64_t n_out) {
  if (y.size(1) != n_out) y = y.narrow(1, 0, n_out).contiguous();
  auto shape = x.sizes().vec();
  shape.back() = n_out;
  return y.view(shape).to(x.scalar_type());
}

inline void check_bias(const c10::optional<torch::Tensor>& bias, int64_t n_out, const char* who) {
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() && bias->numel() == n_out, who,
                ": bias must be a contiguous float32 tensor of ", n_out, " elements");
}

// Outputs [n0, n1) of rows 0 .. M-1: y * col_scale[n] (int8's per-channel scale), then + bias[n].
inline void epilogue(float* y, int64_t ldy, int64_t M, int64_t n0, int64_t n1, const float* col_scale,
                     const float* bias) {
  for (int64_t m = 0; m < M; ++m) {
    float* row = y + m * ldy;
    if (col_scale)
      for (int64_t n = n0; n < n1; ++n) row[n] = row[n] * col_scale[n];
    if (bias)
      for (int64_t n = n0; n < n1; ++n) row[n] = row[n] + bias[n];
  }
}

// M rows cut into near-equal blocks of at most `limit` rows: (first row, rows). Any cut gives the
// same bits (each row is computed on its own); near-equal keeps the last pass from being tiny.
inline std::vector<std::pair<int64_t, int>> row_splits(int64_t M, int limit) {
  const int64_t blocks = (M + limit - 1) / limit;
  std::vector<std::pair<int64_t, int>> splits;
  for (int64_t rb = 0, r0 = 0; rb < blocks; ++rb) {
    const int mr = static_cast<int>((M - r0) / (blocks - rb));
    splits.emplace_back(r0, mr);
    r0 += mr;
  }
  return splits;
}

}  // namespace specdec_common
