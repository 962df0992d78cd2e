"""One involution on the GPU through the CuPy kernels, compared with the unfold definition:
the check that tools/install.py runs after installing CuPy.

    python3 -m involution_d2.ops.cuda_check      # one line; exit status 1 if it fails
"""
import sys
import time

import torch


def check_cuda_kernels(device="cuda"):
    """Runs the CuPy forward kernel once (NVRTC compiles it on first use; CuPy keeps it in its
    disk cache) and returns a one-line report; raises RuntimeError saying what failed."""
    from .involution import involution

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA GPU")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 6, 6, generator=generator).to(device)
    weight = torch.randn(1, 2, 3, 3, 6, 6, generator=generator).to(device)
    began = time.perf_counter()
    out = involution(x, weight, padding=1, backend="cupy")
    torch.cuda.synchronize(device)
    took = time.perf_counter() - began
    expected = involution(x, weight, padding=1, backend="reference")
    error = (out - expected).abs().max().item()
    if not error < 1e-4:
        raise RuntimeError(f"the CuPy kernel's output differs from the definition by {error}")
    import cupy

    name = torch.cuda.get_device_name(device)
    return f"CuPy {cupy.__version__} ran an involution kernel on {name} ({took:.1f} s)"


def main():
    try:
        print(check_cuda_kernels(), flush=True)
    except Exception as e:  # noqa: BLE001 - the set-up reports any failure as one line
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
