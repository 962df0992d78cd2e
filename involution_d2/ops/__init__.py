"""The involution operator.  Needs torch only: Detectron2 is never imported here, CuPy only
when a CUDA tensor runs the "cupy" backend, and the native CPU kernel is compiled by its
first use (see native.py).  Importing this package registers the custom operator
``torch.ops.involution_d2.involution`` (op.py)."""
from .involution import BACKENDS, fused_involution, involution, output_size, resolve_backend

__all__ = ["BACKENDS", "fused_involution", "involution", "output_size", "resolve_backend"]
