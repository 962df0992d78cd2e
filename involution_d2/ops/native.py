"""The native CPU kernels (``csrc/involution_cpu.cpp``), compiled on first use and cached.

The first CPU call of the ``"native"`` backend compiles the C++ source with
``torch.utils.cpp_extension.load`` (a C++ compiler and ninja are needed: about a minute on
two cores) into torch's extension cache (``~/.cache/torch_extensions``, or
``$TORCH_EXTENSIONS_DIR``); later processes load the cached library in well under a second.
The library registers the operators ``torch.ops.involution_d2_cpu.forward`` and ``.backward``.

It is compiled for the vector instruction set that ATen itself uses on this CPU
(``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2 or the portable default), and
that name is part of the library's name, so that machines sharing a cache never load a
library built for another CPU.  Where compiling fails (no compiler, no ninja),
``backend="auto"`` runs the pure-PyTorch ``"torch"`` backend instead, and the backend table
says why in one warning.  Set ``INVOLUTION_NATIVE=0`` to skip the native kernels altogether
(silently).
"""
import functools
import os

import torch

from .backends import Backend, BackendUnavailable, Kernels, register_backend

SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "involution_cpu.cpp")

# The flags ATen compiles its own kernels with for each capability (cmake/Codegen.cmake).
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}


class NativeUnavailableError(RuntimeError):
    """The native CPU kernels were asked for but could not be built or loaded."""


def capability():
    """The vector instruction set the native library is built for: ATen's on this CPU where
    it is an x86 one this file knows, else "DEFAULT" (portable C++)."""
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in _CAPABILITY_FLAGS else "DEFAULT"


def build_options(cap=None):
    """(library name, compiler flags, linker flags) for capability ``cap``."""
    cap = cap or capability()
    cflags = ["-O3"] + _CAPABILITY_FLAGS.get(cap, [])
    if cap != "DEFAULT":
        # at::vec picks its implementation from these macros, as in ATen's own build.
        cflags += [f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}"]
    ldflags = []
    if "OpenMP" in torch.__config__.parallel_info():
        # at::parallel_for is inline OpenMP code: without -fopenmp it would run serially.
        # The library then shares torch's libgomp (same soname), so torch.set_num_threads
        # applies to it.
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return f"involution_d2_cpu_{cap.lower()}", cflags, ldflags


def _load():
    from torch.utils import cpp_extension

    name, cflags, ldflags = build_options()
    cpp_extension.load(name=name, sources=[SOURCE], extra_cflags=cflags,
                       extra_ldflags=ldflags, is_python_module=False, verbose=False)


@functools.lru_cache(maxsize=None)
def status():
    """(True, None) once the library is loaded (compiling it on the first call), else (False,
    the reason)."""
    if os.environ.get("INVOLUTION_NATIVE", "1") == "0":
        return False, "disabled by INVOLUTION_NATIVE=0"
    try:
        _load()
    except Exception as e:  # noqa: BLE001 - any build or load failure means "fall back"
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # The compiler's first error says more than ninja's last line.
        errors = ([line for line in lines if "error:" in line]
                  or [line for line in lines if "error" in line.lower()])
        return False, (f"it could not be compiled ({type(e).__name__}: "
                       f"{(errors or lines or [''])[0][:300]}); it needs a C++ compiler and "
                       "ninja (pip install ninja); INVOLUTION_NATIVE=0 turns it off")
    return True, None


def native_is_available():
    """True when the native CPU kernels are loaded (compiling them on the first call)."""
    return status()[0]


def _kernels():
    ok, reason = status()
    if not ok:
        raise BackendUnavailable(reason, quiet=reason.startswith("disabled"))
    ops = torch.ops.involution_d2_cpu  # the overloads: no overload resolution per call
    return Kernels(ops.forward.default, ops.backward.default, ops.fused_forward.default,
                   ops.fused_backward.default)


register_backend(Backend("native", ("cpu",), _kernels, "the native CPU kernels", auto_order=0,
                         hint="install a C++ compiler and ninja, or use backend='torch'",
                         error=NativeUnavailableError))
