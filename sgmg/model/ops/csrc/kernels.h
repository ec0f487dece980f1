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

// window_attention_cpu.cpp: Video Swin window attention, float32 (AVX-512) or bfloat16 (AVX-512 BF16).
bool window_attention_supported(bool bf16);
torch::Tensor window_attention(const torch::Tensor& qkv, const torch::Tensor& bias, const torch::Tensor& window_mask,
                               const torch::Tensor& masks, double scale);
