// Python bindings of the C++ CPU kernels (sgmg.model.ops.cpu_kernels builds this module from every csrc/*.cpp).
#include "kernels.h"

bool avx512_supported(bool bf16) {
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return avx512 && (!bf16 || __builtin_cpu_supports("avx512bf16"));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ms_deform_attn_forward, "multi-scale deformable attention forward (CPU, float32)");
  m.def("backward", &ms_deform_attn_backward, "multi-scale deformable attention backward (CPU, float32)");
  m.def("avx512_supported", &avx512_supported,
        "whether this CPU has what the AVX-512 kernels need: AVX-512 F/BW/VL/DQ, and AVX-512 BF16 too when bf16=True");
  m.def("window_attention", &window_attention,
        "Video Swin window attention: qkv [W, N, 3, heads, 32] float32 or bfloat16, bias [heads, N, N] float32, "
        "window_mask [W] int64 (index into masks or -1), masks [K, N, N] float32, scale -> [W, N, heads * 32]");
  m.def("few_rows_linear", &few_rows_linear,
        "x [M, K] @ weight [N, K]^T + bias [N] (or None), float32, contiguous; for few rows M (AVX-512)",
        py::arg("x"), py::arg("weight"), py::arg("bias"));
}
