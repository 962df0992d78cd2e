"""The involution operator.  Needs torch only: Detectron2 is never imported here, CuPy only
when a CUDA tensor runs the "cupy" backend, and the native CPU kernels are compiled by their
first use (see native.py).  Importing this package registers the custom operators
``torch.ops.involution_d2.involution`` and ``torch.ops.involution_d2.fused_involution``.

By role: ``involution.py`` checks arguments (the public functions); ``op.py`` holds the
registered operators, their autograd and the eager route; ``backends.py`` the table of
backends, the one place that decides which kernels run; one module per backend, each
registering itself: ``reference.py`` (unfold), ``shifted.py`` ("torch"), ``native.py`` with
``csrc/`` (the C++ CPU kernels), ``cupy_backend.py`` with ``cuda/`` (the CUDA kernels);
``composite.py`` composes the fused operator for backends without fused kernels;
``export.py`` lowers the operators for ONNX."""
from . import cupy_backend, native, reference, shifted  # noqa: F401 - each registers its backend
from .backends import (Backend, BackendUnavailable, Kernels, backend_names, register_backend,
                       unregister_backend)
from .involution import fused_involution, involution, output_size, resolve_backend

__all__ = ["Backend", "BackendUnavailable", "Kernels", "backend_names", "fused_involution",
           "involution", "output_size", "register_backend", "resolve_backend",
           "unregister_backend"]
