// Window attention of the Video Swin blocks on CPUs with AVX-512, in inference: softmax(Q K^T * scale + bias [+ shift
// mask]) V for every window and head, with head width 32, in one pass that keeps each window's scores in cache.
// float32: float32 FMAs. bfloat16 (AVX-512 BF16): Q K^T and P V are bf16 dot products accumulated in float32
// (VDPBF16PS), the scores, bias, mask and softmax are float32, and the softmax numerators are rounded to bf16 for P V,
// as PyTorch's CPU flash attention does in bf16. Both read Q, K and V straight from the qkv projection's output
// ([windows, N, 3, heads, 32]) and write [windows, N, heads * 32], the layout the output projection reads, so the
// permutes around scaled_dot_product_attention are gone. PyTorch's CPU kernel spends most of its time on the many
// tiny matrix multiplies of 245-token windows with 32-wide heads; this one packs K (and V) once per window and head
// and computes 8 query rows at a time. Compiled for any x86-64 (per-function target attributes); callers check
// avx512_supported() and fall back to scaled_dot_product_attention. Threads: ATen's intra-op pool.
// Bound to Python in bindings.cpp.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int kHeadDim = 32;  // channels per head (every Video Swin variant)
constexpr int kPairs = kHeadDim / 2;
constexpr int kRows = 8;  // query rows computed together (register blocking)

// exp(x) for x <= 0 (scores minus their row maximum), float32, ~1 ulp: 2^n * p(r) with r = x - n ln 2 in
// [-ln2/2, ln2/2] and a degree-6 polynomial; inputs below -87 give 0.
SGMG_AVX512 inline __m512 exp_ps(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(static_cast<__mmask16>(~tiny), p, n);
}

// Per-thread buffers for one window and head, n padded to np (a multiple of 32).
struct Scratch {
  std::vector<float> kf;    // fp32: [kHeadDim][np] K transposed
  std::vector<uint32_t> k;  // bf16: [kPairs][np] channel pairs of K, 16 keys a vector
  std::vector<uint32_t> v;  // bf16: [np / 2][kHeadDim] key pairs of V for each channel
  std::vector<float> s;     // [kRows][np] scores, then softmax numerators
  std::vector<uint32_t> p;  // bf16: [kRows][np / 2] numerators in key pairs
  Scratch(int64_t np, bool bf16)
      : kf(bf16 ? 0 : kHeadDim * np),
        k(bf16 ? kPairs * np : 0),
        v(bf16 ? np / 2 * kHeadDim : 0),
        s(kRows * np),
        p(bf16 ? kRows * np / 2 : 0) {}
};

// Where one window and head live: q, k, v rows `row` elements apart; bias and mask [n, n] float32 (mask may be null).
template <typename T>
struct Window {
  const T* q;
  const T* k;
  const T* v;
  T* out;  // [n, heads * 32] at this head's columns
  int64_t n, row, out_row;
  const float* bias;
  const float* mask;
};

// scores[r][j0:j0+16] = acc * scale + bias (+ mask) for the rows of this block, -inf at keys beyond n
SGMG_AVX512 inline void store_scores(const __m512* acc, int rows, int64_t i0, int64_t j0, int64_t np, int64_t n,
                                     float scale, const float* bias, const float* mask, float* s) {
  const __mmask16 valid = j0 + 16 <= n ? 0xFFFF : (j0 < n ? static_cast<__mmask16>((1u << (n - j0)) - 1) : 0);
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    __m512 x = _mm512_fmadd_ps(acc[r], _mm512_set1_ps(scale), _mm512_maskz_loadu_ps(valid, bias + i * n + j0));
    if (mask != nullptr) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(valid, mask + i * n + j0));
    _mm512_storeu_ps(s + r * np + j0, _mm512_mask_blend_ps(valid, neg_inf, x));
  }
}

// s[0:np] = exp(s - max(s)) in place; returns 1 / their sum
SGMG_AVX512 inline float softmax_numerators(float* s, int64_t np) {
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < np; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < np; j += 16) {
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
    sum = _mm512_add_ps(sum, e);
    _mm512_storeu_ps(s + j, e);
  }
  return 1.0f / _mm512_reduce_add_ps(sum);
}

// float32: Q K^T and P V as float32 FMAs.
SGMG_AVX512 void attend_f32(const Window<float>& w, float scale, Scratch& sc) {
  const int64_t n = w.n, np = (n + 31) / 32 * 32;
  float* kt = sc.kf.data();
  for (int c = 0; c < kHeadDim; ++c)
    for (int64_t j = 0; j < np; ++j) kt[c * np + j] = j < n ? w.k[j * w.row + c] : 0.0f;
  float* s = sc.s.data();
  for (int64_t i0 = 0; i0 < n; i0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, n - i0));
    const float* qr[kRows];
    for (int r = 0; r < kRows; ++r) qr[r] = w.q + (i0 + std::min(r, rows - 1)) * w.row;
    for (int64_t j0 = 0; j0 < np; j0 += 16) {
      __m512 acc[kRows];
      for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
      for (int c = 0; c < kHeadDim; ++c) {
        const __m512 kv = _mm512_loadu_ps(kt + c * np + j0);
        for (int r = 0; r < kRows; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qr[r][c]), kv, acc[r]);
      }
      store_scores(acc, rows, i0, j0, np, n, scale, w.bias, w.mask, s);
    }
    float inv_sum[kRows] = {};
    for (int r = 0; r < rows; ++r) inv_sum[r] = softmax_numerators(s + r * np, np);
    __m512 o0[kRows], o1[kRows];
    for (int r = 0; r < kRows; ++r) o0[r] = o1[r] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m512 v0 = _mm512_loadu_ps(w.v + j * w.row), v1 = _mm512_loadu_ps(w.v + j * w.row + 16);
      for (int r = 0; r < kRows; ++r) {
        const __m512 pj = _mm512_set1_ps(s[r * np + j]);
        o0[r] = _mm512_fmadd_ps(pj, v0, o0[r]);
        o1[r] = _mm512_fmadd_ps(pj, v1, o1[r]);
      }
    }
    for (int r = 0; r < rows; ++r) {
      const __m512 f = _mm512_set1_ps(inv_sum[r]);
      float* dst = w.out + (i0 + r) * w.out_row;
      _mm512_storeu_ps(dst, _mm512_mul_ps(o0[r], f));
      _mm512_storeu_ps(dst + 16, _mm512_mul_ps(o1[r], f));
    }
  }
}

// bfloat16: Q K^T and P V as bf16 dot products accumulated in float32 (VDPBF16PS), on K packed as channel pairs and V
// as key pairs; the softmax numerators are rounded to bf16 for P V.
SGMG_AVX512_BF16 void attend_bf16(const Window<uint16_t>& w, float scale, Scratch& sc) {
  const int64_t n = w.n, np = (n + 31) / 32 * 32;
  uint32_t* kp = sc.k.data();
  for (int64_t j = 0; j < np; ++j) {
    const uint32_t* kr = reinterpret_cast<const uint32_t*>(w.k + j * w.row);
    for (int c = 0; c < kPairs; ++c) kp[c * np + j] = j < n ? kr[c] : 0u;
  }
  uint32_t* vp = sc.v.data();
  for (int64_t j = 0; j < np; j += 2) {
    for (int c = 0; c < kHeadDim; ++c) {
      const uint32_t a = j < n ? w.v[j * w.row + c] : 0u;
      const uint32_t b = j + 1 < n ? w.v[(j + 1) * w.row + c] : 0u;
      vp[(j / 2) * kHeadDim + c] = a | (b << 16);
    }
  }
  float* s = sc.s.data();
  for (int64_t i0 = 0; i0 < n; i0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, n - i0));
    const uint32_t* qr[kRows];
    for (int r = 0; r < kRows; ++r)
      qr[r] = reinterpret_cast<const uint32_t*>(w.q + (i0 + std::min(r, rows - 1)) * w.row);
    for (int64_t j0 = 0; j0 < np; j0 += 16) {
      __m512 acc[kRows];
      for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
      for (int c = 0; c < kPairs; ++c) {
        const __m512bh kv = (__m512bh)_mm512_loadu_si512(kp + c * np + j0);
        for (int r = 0; r < kRows; ++r)
          acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(static_cast<int>(qr[r][c])), kv);
      }
      store_scores(acc, rows, i0, j0, np, n, scale, w.bias, w.mask, s);
    }
    float inv_sum[kRows] = {};
    for (int r = 0; r < rows; ++r) {
      inv_sum[r] = softmax_numerators(s + r * np, np);
      uint32_t* pr = sc.p.data() + r * (np / 2);
      for (int64_t j = 0; j < np; j += 32) {
        const __m512bh pb = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + r * np + j + 16), _mm512_loadu_ps(s + r * np + j));
        _mm512_storeu_si512(pr + j / 2, (__m512i)pb);  // 32 bf16 in key order
      }
    }
    __m512 o0[kRows], o1[kRows];
    for (int r = 0; r < kRows; ++r) o0[r] = o1[r] = _mm512_setzero_ps();
    const uint32_t* pbase = sc.p.data();
    for (int64_t jp = 0; jp < (n + 1) / 2; ++jp) {
      const __m512bh v0 = (__m512bh)_mm512_loadu_si512(vp + jp * kHeadDim);
      const __m512bh v1 = (__m512bh)_mm512_loadu_si512(vp + jp * kHeadDim + 16);
      for (int r = 0; r < kRows; ++r) {
        const __m512bh pr = (__m512bh)_mm512_set1_epi32(static_cast<int>(pbase[r * (np / 2) + jp]));
        o0[r] = _mm512_dpbf16_ps(o0[r], pr, v0);
        o1[r] = _mm512_dpbf16_ps(o1[r], pr, v1);
      }
    }
    for (int r = 0; r < rows; ++r) {
      const __m512 f = _mm512_set1_ps(inv_sum[r]);
      uint16_t* dst = w.out + (i0 + r) * w.out_row;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(o0[r], f)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(o1[r], f)));
    }
  }
}

template <typename T>
Window<T> window_at(const T* qkv, T* out, int64_t win, int64_t head, int64_t n, int64_t heads, const float* bias,
                    const float* mask) {
  const int64_t row = 3 * heads * kHeadDim;
  const T* q = qkv + win * n * row + head * kHeadDim;
  return Window<T>{q,    q + heads * kHeadDim, q + 2 * heads * kHeadDim, out + win * n * heads * kHeadDim + head * kHeadDim,
                   n,    row,                  heads * kHeadDim,          bias + head * n * n,
                   mask};
}

}  // namespace

// qkv: [W, N, 3, heads, 32] float32 or bf16; bias: [heads, N, N] float32; window_mask: [W] int64, index into masks
// or -1; masks: [K, N, N] float32. Returns [W, N, heads * 32] in qkv's dtype.
torch::Tensor window_attention(const torch::Tensor& qkv, const torch::Tensor& bias, const torch::Tensor& window_mask,
                               const torch::Tensor& masks, double scale) {
  const bool bf16 = qkv.scalar_type() == torch::kBFloat16;
  TORCH_CHECK(qkv.device().is_cpu() && (bf16 || qkv.scalar_type() == torch::kFloat) && qkv.dim() == 5 &&
                  qkv.size(2) == 3 && qkv.size(4) == kHeadDim && qkv.is_contiguous(),
              "qkv must be a contiguous CPU float32 or bfloat16 [windows, N, 3, heads, 32] tensor");
  TORCH_CHECK(avx512_supported(bf16), "window_attention needs a CPU with AVX-512", bf16 ? " BF16" : "");
  const int64_t w = qkv.size(0), n = qkv.size(1), heads = qkv.size(3);
  TORCH_CHECK(bias.scalar_type() == torch::kFloat && bias.is_contiguous() &&
                  bias.sizes() == torch::IntArrayRef({heads, n, n}),
              "bias must be a contiguous float32 [heads, N, N] tensor");
  TORCH_CHECK(window_mask.scalar_type() == torch::kLong && window_mask.numel() == w, "window_mask must be int64 [W]");
  TORCH_CHECK(masks.scalar_type() == torch::kFloat && masks.is_contiguous() && masks.dim() == 3 &&
                  (masks.size(0) == 0 || (masks.size(1) == n && masks.size(2) == n)),
              "masks must be a contiguous float32 [K, N, N] tensor");
  auto wm = window_mask.contiguous();
  const int64_t* which = wm.data_ptr<int64_t>();
  for (int64_t i = 0; i < w; ++i)
    TORCH_CHECK(which[i] >= -1 && which[i] < masks.size(0), "window_mask[", i, "] = ", which[i], " out of range");
  auto out = torch::empty({w, n, heads * kHeadDim}, qkv.options());
  const float* b = bias.data_ptr<float>();
  const float* mk = masks.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  // bf16 as its raw 16 bits (the kernels load and convert them themselves)
  const auto* src16 = bf16 ? reinterpret_cast<const uint16_t*>(qkv.data_ptr<at::BFloat16>()) : nullptr;
  auto* dst16 = bf16 ? reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) : nullptr;
  const float* src32 = bf16 ? nullptr : qkv.data_ptr<float>();
  float* dst32 = bf16 ? nullptr : out.data_ptr<float>();
  at::parallel_for(0, w * heads, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch((n + 31) / 32 * 32, bf16);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t win = item / heads, head = item % heads;
      const float* mask = which[win] < 0 ? nullptr : mk + which[win] * n * n;
      if (bf16) {
        attend_bf16(window_at(src16, dst16, win, head, n, heads, b, mask), sc, scratch);
      } else {
        attend_f32(window_at(src32, dst32, win, head, n, heads, b, mask), sc, scratch);
      }
    }
  });
  return out;
}
