// The C++ CPU kernels of sgmg.model.ops, declared for bindings.cpp (one extension module: sgmg_cpu_kernels).
#pragma once

#include <torch/extension.h>

#include <vector>

// ms_deform_attn_cpu.cpp: multi-scale deformable attention, float32.
torch::Tensor ms_deform_attn_forward(const torch::Tensor& value_in, const torch::Tensor& spatial_shapes,
                                     const torch::Tensor& sampling_loc, const torch::Tensor& attn_weight);
std::vector<torch::Tensor> ms_deform_attn_backward(const torch::Tensor& value_in, const torch::Tensor& spatial_shapes,
                                                   const torch::Tensor& sampling_loc, const torch::Tensor& attn_weight,
                                                   const torch::Tensor& grad_output);

// The AVX-512 kernels are compiled for any x86-64 with these per-function target attributes; callers check
// avx512_supported() at run time (bindings.cpp) and otherwise take PyTorch's ops.
#define SGMG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define SGMG_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

// Whether this CPU has AVX-512 F/BW/VL/DQ, and AVX-512 BF16 too when bf16 (bindings.cpp).
bool avx512_supported(bool bf16);

// window_attention_cpu.cpp: Video Swin window attention, float32 (AVX-512) or bfloat16 (AVX-512 BF16).
torch::Tensor window_attention(const torch::Tensor& qkv, const torch::Tensor& bias, const torch::Tensor& window_mask,
                               const torch::Tensor& masks, double scale);

// few_rows_linear_cpu.cpp: x [M, K] @ weight [N, K]^T + bias for few rows M, float32 (AVX-512).
torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& weight,
                              const c10::optional<torch::Tensor>& bias);
