// Multi-scale deformable attention on CPU (Zhu et al., "Deformable DETR", ICLR 2021): the bilinear sampling of every
// level and point fused with the attention weighting and the level sum, so no sampled tensor is ever materialised.
// Same arithmetic as F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False) on locations in [0, 1]
// of each level's map: pixel coordinate x * w - 0.5, a corner outside the map contributes zero.
// Forward on AVX-512 CPUs for head widths that are a multiple of 16 (up to 256) and at most 64 points a head: one
// (query, head) at a time with its sum in registers, its corners listed (and prefetched) while the previous one sums,
// as the samples land near the query and the value rows come from L2/L3 (2.2-2.7x the plain loop at the Swin-T
// encoder's shapes on 5 x 360 x 640). Otherwise, and for the backward, plain loops.
// Threads: ATen's intra-op pool (torch.set_num_threads). Bound to Python in bindings.cpp.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Levels {
  std::vector<int64_t> h, w, start;
};

Levels read_levels(const torch::Tensor& shapes) {
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(1) == 2, "spatial_shapes must be [L, 2] (h, w)");
  auto s = shapes.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t* p = s.data_ptr<int64_t>();
  Levels lv;
  int64_t start = 0;
  for (int64_t l = 0; l < s.size(0); ++l) {
    lv.h.push_back(p[2 * l]);
    lv.w.push_back(p[2 * l + 1]);
    lv.start.push_back(start);
    start += p[2 * l] * p[2 * l + 1];
  }
  return lv;
}

// The four corners of one bilinear sample: flat pixel index within the level (or -1 outside) and weight.
struct Corners {
  int64_t idx[4];
  float wt[4];
  // derivative of each corner weight with respect to the pixel coordinates x and y
  float dx[4];
  float dy[4];
};

inline void corners(float loc_x, float loc_y, int64_t h, int64_t w, Corners& c) {
  const float x = loc_x * static_cast<float>(w) - 0.5f;
  const float y = loc_y * static_cast<float>(h) - 0.5f;
  const float fx = std::floor(x), fy = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  const float ax = x - fx, ay = y - fy;  // fractional parts
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const float wx[4] = {1.f - ax, ax, 1.f - ax, ax};
  const float wy[4] = {1.f - ay, 1.f - ay, ay, ay};
  const float sx[4] = {-1.f, 1.f, -1.f, 1.f};
  const float sy[4] = {-1.f, -1.f, 1.f, 1.f};
  for (int k = 0; k < 4; ++k) {
    const bool inside = xs[k] >= 0 && xs[k] < w && ys[k] >= 0 && ys[k] < h;
    c.idx[k] = inside ? ys[k] * w + xs[k] : -1;
    c.wt[k] = wx[k] * wy[k];
    c.dx[k] = sx[k] * wy[k];
    c.dy[k] = sy[k] * wx[k];
  }
}

// The checked, contiguous inputs of both passes and their sizes.
struct Inputs {
  Levels lv;
  torch::Tensor value, loc, attn;
  int64_t B, S, M, D, Q, L, P;
};

Inputs prepare(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& loc,
               const torch::Tensor& attn) {
  Inputs in;
  in.lv = read_levels(shapes);
  in.L = static_cast<int64_t>(in.lv.h.size());
  TORCH_CHECK(value.device().is_cpu() && loc.device().is_cpu() && attn.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(value.scalar_type() == torch::kFloat && loc.scalar_type() == torch::kFloat &&
                  attn.scalar_type() == torch::kFloat,
              "float32 tensors only");
  TORCH_CHECK(value.dim() == 4, "value must be [B, S, M, D]");
  TORCH_CHECK(loc.dim() == 6 && loc.size(5) == 2, "sampling_locations must be [B, Q, M, L, P, 2]");
  TORCH_CHECK(attn.dim() == 5, "attention_weights must be [B, Q, M, L, P]");
  TORCH_CHECK(loc.size(0) == value.size(0) && loc.size(2) == value.size(2) && loc.size(3) == in.L,
              "sampling_locations do not match value / spatial_shapes");
  TORCH_CHECK(attn.sizes() == loc.sizes().slice(0, 5), "attention_weights do not match sampling_locations");
  in.value = value.contiguous();
  in.loc = loc.contiguous();
  in.attn = attn.contiguous();
  in.B = value.size(0), in.S = value.size(1), in.M = value.size(2), in.D = value.size(3);
  in.Q = loc.size(1), in.P = loc.size(4);
  return in;
}

// One bilinear corner inside the map: its value row (of one head) and its weight times the attention weight.
struct Tap {
  const float* src;
  float wt;
};

constexpr int kMaxPoints = 64;  // L * P of one head for the AVX-512 path

// The corners inside the map of every point of one (query, head), in the plain loop's order and with its arithmetic
// (corners() without the derivatives); returns their count. lp: the head's L*P (x, y) locations, ap: its L*P
// attention weights, vhead: value[b, 0, m, 0], md = M * D.
int list_taps(const float* lp, const float* ap, const Levels& lv, const float* vhead, int64_t L, int64_t P,
              int64_t md, Tap* taps) {
  int n = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t h = lv.h[l], w = lv.w[l];
    const float* vl = vhead + lv.start[l] * md;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = l * P + p;
      const float x = lp[2 * i] * static_cast<float>(w) - 0.5f;
      const float y = lp[2 * i + 1] * static_cast<float>(h) - 0.5f;
      const float fx = std::floor(x), fy = std::floor(y);
      const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
      const float ax = x - fx, ay = y - fy;
      const bool x0_in = x0 >= 0 && x0 < w, x1_in = x0 + 1 >= 0 && x0 + 1 < w;
      const bool y0_in = y0 >= 0 && y0 < h, y1_in = y0 + 1 >= 0 && y0 + 1 < h;
      const float a = ap[i];
      const float* row0 = vl + (y0 * w + x0) * md;
      const float* row1 = row0 + w * md;
      if (y0_in && x0_in) taps[n++] = {row0, a * ((1.f - ax) * (1.f - ay))};
      if (y0_in && x1_in) taps[n++] = {row0 + md, a * (ax * (1.f - ay))};
      if (y1_in && x0_in) taps[n++] = {row1, a * ((1.f - ax) * ay)};
      if (y1_in && x1_in) taps[n++] = {row1 + md, a * (ax * ay)};
    }
  }
  return n;
}

// Lists the taps of (query, head) item (b * Q + q) * M + m and prefetches their value rows.
template <int64_t D>
inline int list_item(int64_t item, const float* v, const float* lp, const float* ap, const Levels& lv, int64_t S,
                     int64_t M, int64_t Q, int64_t L, int64_t P, Tap* taps) {
  const int64_t bq = item / M, m = item % M, b = bq / Q;
  const int n = list_taps(lp + 2 * item * L * P, ap + item * L * P, lv, v + b * S * M * D + m * D, L, P, M * D, taps);
  for (int k = 0; k < n; ++k) {
    for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(taps[k].src + d), _MM_HINT_T0);
  }
  return n;
}

// Forward of (query, head) items [begin, end) with D = 16 * V channels a head.
template <int V>
SGMG_AVX512 void forward_avx512(const Inputs& in, const float* v, const float* lp, const float* ap, float* op,
                                int64_t begin, int64_t end) {
  constexpr int64_t D = 16 * V;
  const Levels& lv = in.lv;
  const int64_t S = in.S, M = in.M, Q = in.Q, L = in.L, P = in.P;
  Tap cur[4 * kMaxPoints], next[4 * kMaxPoints];
  int n_cur = begin < end ? list_item<D>(begin, v, lp, ap, lv, S, M, Q, L, P, cur) : 0;
  for (int64_t item = begin; item < end; ++item) {
    // the next item's rows load while this one sums
    const int n_next = item + 1 < end ? list_item<D>(item + 1, v, lp, ap, lv, S, M, Q, L, P, next) : 0;
    __m512 acc[V];
    for (int j = 0; j < V; ++j) acc[j] = _mm512_setzero_ps();
    for (int k = 0; k < n_cur; ++k) {
      const __m512 wk = _mm512_set1_ps(cur[k].wt);
      for (int j = 0; j < V; ++j) acc[j] = _mm512_fmadd_ps(wk, _mm512_loadu_ps(cur[k].src + 16 * j), acc[j]);
    }
    for (int j = 0; j < V; ++j) _mm512_storeu_ps(op + item * D + 16 * j, acc[j]);
    std::copy(next, next + n_next, cur);
    n_cur = n_next;
  }
}

// The AVX-512 forward for this D, or nullptr.
using ForwardFn = void (*)(const Inputs&, const float*, const float*, const float*, float*, int64_t, int64_t);
ForwardFn avx512_forward(const Inputs& in) {
  if (in.L * in.P > kMaxPoints || !avx512_supported(false)) return nullptr;
  switch (in.D) {
    case 16: return forward_avx512<1>;
    case 32: return forward_avx512<2>;
    case 64: return forward_avx512<4>;
    case 128: return forward_avx512<8>;
    case 256: return forward_avx512<16>;
    default: return nullptr;
  }
}

}  // namespace

// value [B, S, M, D], spatial_shapes [L, 2], sampling_locations [B, Q, M, L, P, 2], attention_weights [B, Q, M, L, P]
// -> [B, Q, M*D]
torch::Tensor ms_deform_attn_forward(const torch::Tensor& value_in, const torch::Tensor& spatial_shapes,
                                     const torch::Tensor& loc_in, const torch::Tensor& attn_in) {
  const Inputs in = prepare(value_in, spatial_shapes, loc_in, attn_in);
  const Levels& lv = in.lv;
  const int64_t B = in.B, S = in.S, M = in.M, D = in.D, Q = in.Q, L = in.L, P = in.P;
  const float* v = in.value.data_ptr<float>();
  const float* lp = in.loc.data_ptr<float>();
  const float* ap = in.attn.data_ptr<float>();
  if (const ForwardFn fast = avx512_forward(in)) {
    auto out = torch::empty({B, Q, M * D}, in.value.options());
    float* op = out.data_ptr<float>();
    at::parallel_for(0, B * Q * M, 64, [&](int64_t begin, int64_t end) { fast(in, v, lp, ap, op, begin, end); });
    return out;
  }
  auto out = torch::zeros({B, Q, M * D}, in.value.options());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * Q, 16, [&](int64_t begin, int64_t end) {
    Corners c;
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / Q;
      for (int64_t m = 0; m < M; ++m) {
        float* o = op + (bq * M + m) * D;
        const int64_t base = (bq * M + m) * L * P;  // into attn (and loc / 2)
        for (int64_t l = 0; l < L; ++l) {
          const float* vl = v + ((b * S + lv.start[l]) * M + m) * D;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t i = base + l * P + p;
            const float a = ap[i];
            corners(lp[2 * i], lp[2 * i + 1], lv.h[l], lv.w[l], c);
            for (int k = 0; k < 4; ++k) {
              if (c.idx[k] < 0) continue;
              const float wk = a * c.wt[k];
              const float* src = vl + c.idx[k] * M * D;
#pragma omp simd
              for (int64_t d = 0; d < D; ++d) o[d] += wk * src[d];
            }
          }
        }
      }
    }
  });
  return out;
}

// Gradients of ms_deform_attn_forward with respect to value, sampling_locations and attention_weights.
// grad_value is accumulated per (b, m) slice (one task owns a slice: no two threads write the same element).
std::vector<torch::Tensor> ms_deform_attn_backward(const torch::Tensor& value_in, const torch::Tensor& spatial_shapes,
                                                   const torch::Tensor& loc_in, const torch::Tensor& attn_in,
                                                   const torch::Tensor& grad_out_in) {
  const Inputs in = prepare(value_in, spatial_shapes, loc_in, attn_in);
  const Levels& lv = in.lv;
  const int64_t B = in.B, S = in.S, M = in.M, D = in.D, Q = in.Q, L = in.L, P = in.P;
  auto grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.scalar_type() == torch::kFloat && grad_out.numel() == B * Q * M * D,
              "grad_output must be float32 [B, Q, M*D]");
  auto grad_value = torch::zeros_like(in.value);
  auto grad_loc = torch::zeros_like(in.loc);
  auto grad_attn = torch::zeros_like(in.attn);
  const float* v = in.value.data_ptr<float>();
  const float* lp = in.loc.data_ptr<float>();
  const float* ap = in.attn.data_ptr<float>();
  const float* g = grad_out.data_ptr<float>();
  float* gv = grad_value.data_ptr<float>();
  float* gl = grad_loc.data_ptr<float>();
  float* ga = grad_attn.data_ptr<float>();
  at::parallel_for(0, B * M, 1, [&](int64_t begin, int64_t end) {
    Corners c;
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M, m = bm % M;
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t bq = b * Q + q;
        const float* go = g + (bq * M + m) * D;
        const int64_t base = (bq * M + m) * L * P;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t off = ((b * S + lv.start[l]) * M + m) * D;
          const float* vl = v + off;
          float* gvl = gv + off;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t i = base + l * P + p;
            const float a = ap[i];
            corners(lp[2 * i], lp[2 * i + 1], lv.h[l], lv.w[l], c);
            float g_attn = 0.f, g_x = 0.f, g_y = 0.f;
            for (int k = 0; k < 4; ++k) {
              if (c.idx[k] < 0) continue;
              const float* src = vl + c.idx[k] * M * D;
              float* dst = gvl + c.idx[k] * M * D;
              const float wk = a * c.wt[k];
              float dot = 0.f;
#pragma omp simd reduction(+ : dot)
              for (int64_t d = 0; d < D; ++d) {
                dot += go[d] * src[d];
                dst[d] += wk * go[d];
              }
              g_attn += c.wt[k] * dot;
              g_x += c.dx[k] * dot;
              g_y += c.dy[k] * dot;
            }
            ga[i] = g_attn;
            gl[2 * i] = a * g_x * static_cast<float>(lv.w[l]);
            gl[2 * i + 1] = a * g_y * static_cast<float>(lv.h[l]);
          }
        }
      }
    }
  });
  return {grad_value, grad_loc, grad_attn};
}
