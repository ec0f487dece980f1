"""The C++ CPU kernels of :mod:`sgmg.model.ops` (``csrc/``), compiled once per machine and loaded on first use.

``make venv`` builds them right after installing (``python -m sgmg.model.ops.cpu_kernels``); otherwise the first
process that needs them compiles them (about 60 s on 2 cores; PyTorch's ``torch.utils.cpp_extension.load``, which
caches the build under ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and lets concurrent
processes wait for one build). Without a C++ compiler the ops fall back to their pure PyTorch formulation, with one
warning. ``SGMG_CPU_KERNELS=0`` turns the kernels off, and :mod:`sgmg.model.ops.linear`'s oneDNN routing with
them (the plain PyTorch ops everywhere).

Three kernels: the multi-scale deformable attention (float32, forward and backward; the forward on AVX-512 CPUs
with its sums in registers and its samples prefetched), the Video Swin window attention
(inference, float32 on AVX-512 CPUs and bfloat16 on AVX-512 BF16 ones) and a float32 linear layer for few rows
(inference, AVX-512: the text encoder's and decoder's matrix multiplies). The AVX-512 ones are compiled for any x86-64
with per-function target attributes, so the module loads everywhere, and ``avx512_supported(bf16)`` says whether this
CPU runs them. We compile our own rather than use a library: no PyPI package ships a CPU multi-scale deformable
attention for this PyTorch (mmcv's is CUDA-only, and its wheels are built for other PyTorch releases), PyTorch's own
CPU attention spends most of its time on the tiny matrix multiplies of 245-token windows with 32-wide heads (1.8x
slower than ours there in float32, 2.4x in bfloat16), and its GEMM packs each weight matrix before multiplying, which
costs more than the multiply for a dozen rows (2x slower than ours on RoBERTa-base's linears for one sentence).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

from sgmg.config_io import env_switch

logger = logging.getLogger(__name__)

ENV = "SGMG_CPU_KERNELS"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = tuple(
    CSRC / name
    for name in ("bindings.cpp", "ms_deform_attn_cpu.cpp", "window_attention_cpu.cpp", "few_rows_linear_cpu.cpp")
)
NAME = "sgmg_cpu_kernels"
FLAGS = ("-O3", "-fopenmp")


def enabled() -> bool:
    """False when ``SGMG_CPU_KERNELS=0`` (or ``false``/``off``/``no``)."""
    return env_switch(ENV)


def _load(verbose: bool) -> ModuleType:
    # torch.utils.cpp_extension logs a CUDA_HOME warning when imported on a machine without CUDA: not ours to show.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        cpp_logger.setLevel(level)
    if shutil.which("ninja") is None:  # PyTorch runs `ninja` from PATH; the PyPI package's may not be on it
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # load() then says that ninja is missing
    return load(NAME, [str(s) for s in SOURCES], extra_cflags=list(FLAGS), verbose=verbose)


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The compiled kernels (building them if this machine has not yet), or None if off or they cannot be built."""
    if not enabled():
        return None
    try:
        return _load(verbose=False)
    except Exception as err:  # no compiler, no ninja, a read-only cache: the PyTorch ops still work
        logger.warning(
            "SgMg's C++ CPU kernels could not be built or loaded (%s: %s); using the pure PyTorch ops (slower). "
            "Run `python -m sgmg.model.ops.cpu_kernels` to see the build output, or set %s=0 to silence this.",
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
            ENV,
        )
        return None


def main() -> int:
    """Build (or find) the kernels and print where they are; exit 1 if they cannot be built."""
    if not enabled():
        print(f"{ENV}=0: the C++ CPU kernels are off; nothing built")
        return 0
    try:
        module = _load(verbose="-v" in sys.argv)
    except Exception as err:
        print(f"error: building SgMg's C++ CPU kernels failed: {err}", file=sys.stderr)
        print(
            "the model still runs with the pure PyTorch ops; install g++ and ninja to get the kernels", file=sys.stderr
        )
        return 1
    print(f"SgMg C++ CPU kernels ready: {module.__file__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
