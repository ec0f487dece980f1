// Python bindings of the C++ CPU kernels (sgmg.model.ops.cpu_kernels builds this module from every csrc/*.cpp).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ms_deform_attn_forward, "multi-scale deformable attention forward (CPU, float32)");
  m.def("backward", &ms_deform_attn_backward, "multi-scale deformable attention backward (CPU, float32)");
  m.def("window_attention_supported", &window_attention_supported,
        "whether this CPU has what window_attention needs: AVX-512, and AVX-512 BF16 for bfloat16 (bf16=True)");
  m.def("window_attention", &window_attention,
        "Video Swin window attention: qkv [W, N, 3, heads, 32] float32 or bfloat16, bias [heads, N, N] float32, "
        "window_mask [W] int64 (index into masks or -1), masks [K, N, N] float32, scale -> [W, N, heads * 32]");
}
