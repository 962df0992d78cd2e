"""The involution operator.  Needs torch only: Detectron2 is never imported here and CuPy
only when a CUDA tensor runs the "cupy" backend."""
from .involution import BACKENDS, involution, output_size, resolve_backend

__all__ = ["BACKENDS", "involution", "output_size", "resolve_backend"]
