"""The involution operator.  Needs torch only: Detectron2 is never imported here, CuPy only
when a CUDA tensor runs the "cupy" backend, and the native CPU kernel is compiled by its
first use (see native.py).  Importing this package registers the custom operators
``torch.ops.involution_d2.involution`` and ``torch.ops.involution_d2.fused_involution``
(op.py).

By role: ``involution.py`` validates arguments and dispatches to a backend; ``op.py`` holds
the library operators, all the autograd (the operators' and the "torch" backend's) and the
one decision of where the native kernels run (``kernel_backend``); one module per kernel: ``reference.py`` (unfold),
``shifted.py`` ("torch"), ``native.py`` with ``csrc/`` (the C++ CPU kernels), ``cupy_backend.py``
with ``cuda/`` (the CUDA kernels); ``export.py`` lowers the operators for ONNX."""
from .involution import BACKENDS, fused_involution, involution, output_size, resolve_backend

__all__ = ["BACKENDS", "fused_involution", "involution", "output_size", "resolve_backend"]
