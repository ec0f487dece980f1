// A linear layer, x [M, K] @ weight [N, K]^T + bias, for few rows M (up to a few dozen), float32, on CPUs with
// AVX-512, in inference. The text encoder runs RoBERTa-base on one sentence (about 12 tokens: M = 12) and the
// decoder its queries (M = frames x queries): there the work is reading the weights, used once per forward. PyTorch's
// GEMM packs each weight matrix into its own layout before multiplying, which costs more than the multiply at these
// sizes (RoBERTa's 72 linears at M = 12 take ~40 ms on 2 cores; this kernel ~20 ms, near the cost of the float
// operations). Here each weight row is read once, straight from its nn.Linear layout: 4 input rows x 6 weight rows
// are 24 float32 accumulators of 16 lanes, over K in chunks of 256 that stay in L1 while every 4-row block of x
// passes over them; the lanes are summed at the end. The summation order differs from PyTorch's GEMM (float rounding
// only). Threads: ATen's intra-op pool, over blocks of weight rows. Bound to Python in bindings.cpp.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int kRows = 4;                                  // input rows in one register block
constexpr int kCols = 6;                                  // weight rows (outputs) in one register block
constexpr int64_t kDepth = 256;                           // K chunk: kCols weight rows of it stay in L1
constexpr int64_t kPassRows = 64;                         // input rows per pass over the weights
constexpr int kPassBlocks = kPassRows / kRows;            // register blocks of one pass
constexpr int kAcc = kRows * kCols;                       // accumulators of one register block
constexpr int64_t kGrain = 8;                             // weight-row blocks per parallel task (at least)

struct Args {
  const float* x;     // [M, K]
  const float* w;     // [N, K]
  const float* bias;  // [N] or nullptr
  float* out;         // [M, N]
  int64_t m, k, n;
};

// acc [R][kCols] (16 lanes each) += x rows [R] . w rows [kCols] over k in [k0, k1); acc is kept in memory between
// K chunks (R x kCols vectors: 1.5 KB).
template <int R>
SGMG_AVX512 inline void accumulate(const float* x, int64_t ldx, const float* const* w, int64_t k0, int64_t k1,
                                   __m512* acc_io) {
  __m512 acc[R][kCols];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < kCols; ++j) acc[i][j] = acc_io[i * kCols + j];
  int64_t k = k0;
  for (; k + 16 <= k1; k += 16) {
    __m512 wv[kCols];
    for (int j = 0; j < kCols; ++j) wv[j] = _mm512_loadu_ps(w[j] + k);
    for (int i = 0; i < R; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < kCols; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < k1) {  // the last K % 16 columns: masked loads read zeros past the end
    const __mmask16 tail = static_cast<__mmask16>((1u << (k1 - k)) - 1);
    __m512 wv[kCols];
    for (int j = 0; j < kCols; ++j) wv[j] = _mm512_maskz_loadu_ps(tail, w[j] + k);
    for (int i = 0; i < R; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, x + i * ldx + k);
      for (int j = 0; j < kCols; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < kCols; ++j) acc_io[i * kCols + j] = acc[i][j];
}

SGMG_AVX512 inline void accumulate_rows(int rows, const float* x, int64_t ldx, const float* const* w, int64_t k0,
                                        int64_t k1, __m512* acc) {
  switch (rows) {
    case 4: accumulate<4>(x, ldx, w, k0, k1, acc); break;
    case 3: accumulate<3>(x, ldx, w, k0, k1, acc); break;
    case 2: accumulate<2>(x, ldx, w, k0, k1, acc); break;
    default: accumulate<1>(x, ldx, w, k0, k1, acc); break;
  }
}

// Output columns [col_begin * kCols, col_end * kCols) of every row.
SGMG_AVX512 void column_blocks(const Args& a, int64_t col_begin, int64_t col_end) {
  alignas(64) __m512 acc[kPassBlocks * kAcc];  // one pass's accumulators (24 KB at most)
  for (int64_t row0 = 0; row0 < a.m; row0 += kPassRows) {
    const int64_t rows = std::min(kPassRows, a.m - row0);
    const int blocks = static_cast<int>((rows + kRows - 1) / kRows);
    for (int64_t cb = col_begin; cb < col_end; ++cb) {
      const int64_t n0 = cb * kCols;
      const int cols = static_cast<int>(std::min<int64_t>(kCols, a.n - n0));
      const float* w[kCols];  // past the last weight row, the last one again (computed, not stored)
      for (int j = 0; j < kCols; ++j) w[j] = a.w + (n0 + std::min(j, cols - 1)) * a.k;
      for (int q = 0; q < blocks * kAcc; ++q) acc[q] = _mm512_setzero_ps();
      for (int64_t k0 = 0; k0 < a.k; k0 += kDepth) {
        const int64_t k1 = std::min(a.k, k0 + kDepth);
        for (int b = 0; b < blocks; ++b) {
          const int64_t r0 = row0 + b * kRows;
          const int r = static_cast<int>(std::min<int64_t>(kRows, a.m - r0));
          accumulate_rows(r, a.x + r0 * a.k, a.k, w, k0, k1, acc + b * kAcc);
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        const __m512* row_acc = acc + (i / kRows) * kAcc + (i % kRows) * kCols;
        float* dst = a.out + (row0 + i) * a.n + n0;
        for (int j = 0; j < cols; ++j) dst[j] = _mm512_reduce_add_ps(row_acc[j]) + (a.bias ? a.bias[n0 + j] : 0.0f);
      }
    }
  }
}

}  // namespace

torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& weight,
                              const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous CPU float32 [M, K] tensor");
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == torch::kFloat && weight.dim() == 2 &&
                  weight.is_contiguous() && weight.size(1) == x.size(1),
              "weight must be a contiguous CPU float32 [N, K] tensor with x's K = ", x.size(1));
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == torch::kFloat && bias->is_contiguous() &&
                    bias->dim() == 1 && bias->size(0) == weight.size(0),
                "bias must be a contiguous CPU float32 [N] tensor with N = ", weight.size(0));
  }
  TORCH_CHECK(avx512_supported(false), "few_rows_linear needs a CPU with AVX-512");
  auto out = torch::empty({x.size(0), weight.size(0)}, x.options());
  const Args a{x.data_ptr<float>(), weight.data_ptr<float>(), has_bias ? bias->data_ptr<float>() : nullptr,
               out.data_ptr<float>(), x.size(0), x.size(1), weight.size(0)};
  if (a.m == 0 || a.n == 0) return out;
  at::parallel_for(0, (a.n + kCols - 1) / kCols, kGrain,
                   [&](int64_t begin, int64_t end) { column_blocks(a, begin, end); });
  return out;
}
