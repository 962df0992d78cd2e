"""The table of involution backends: the one place that says which kernels run.

Each entry (:class:`Backend`) has a name, the device types it runs on, an availability check
that runs once (``load``: it returns the kernels or raises :class:`BackendUnavailable` saying
why), and the order in which ``backend="auto"`` tries it.  The kernels (:class:`Kernels`) are
the forward and backward of the aggregation and, optionally, of the fused operator (the span
convolution and the aggregation in one); a backend without fused kernels gets the span as a
1x1 convolution followed by its aggregation kernels.

Both routes of a call take their kernels from here: eager calls through the autograd
Functions of :mod:`.op`, and the registered operators ``torch.ops.involution_d2.*`` (traced,
compiled and exported code), whose ``backend`` argument carries the user's choice.

Adding a backend is one :func:`register_backend` call with its kernels (docs/OPERATOR.md).
"""
import os
import warnings
from typing import Callable, NamedTuple, Optional, Tuple

from .composite import autograd_backward_of, fused_backward_of, fused_forward_of

BACKEND_ENV = "INVOLUTION_BACKEND"  # what backend="auto" means, read once


class BackendUnavailable(RuntimeError):
    """A backend cannot run here. ``quiet``: the user chose that (no fallback warning)."""

    def __init__(self, reason, quiet=False):
        super().__init__(reason)
        self.quiet = quiet


class Kernels(NamedTuple):
    """A backend's kernels. Inputs may be non-contiguous; one dtype for all tensors.

    - ``forward(x, weight, stride, padding, dilation) -> out``
    - ``backward(grad_out, x, weight, stride, padding, dilation, output_mask) -> (grad_x,
      grad_weight)``; a gradient not asked for in ``output_mask`` may be anything (None, an
      empty tensor): it is dropped.  None: autograd differentiates ``forward`` itself (the
      unfold definition, "reference").
    - ``fused_forward(x, reduced, span_weight, span_bias, groups, kernel_size, stride,
      padding, dilation) -> out`` and ``fused_backward(grad_out, <the same inputs>,
      output_mask) -> (grad_x, grad_reduced, grad_span_weight, grad_span_bias)``, or None for
      the span convolution followed by ``forward`` (and the matching backward, which
      regenerates the kernels rather than keeping them).
    """

    forward: Callable
    backward: Callable
    fused_forward: Optional[Callable] = None
    fused_backward: Optional[Callable] = None


class Complete(NamedTuple):
    """Kernels with the fused ones composed where missing, and ``backward`` by autograd where
    missing (``autograd``: eager calls let autograd differentiate ``forward``)."""

    forward: Callable
    backward: Callable
    fused_forward: Callable
    fused_backward: Callable
    autograd: bool


def complete(kernels):
    if kernels.backward is None:
        return Complete(kernels.forward, autograd_backward_of(kernels.forward, 2),
                        fused_forward_of(kernels.forward),
                        autograd_backward_of(fused_forward_of(kernels.forward), 4), True)
    return Complete(kernels.forward, kernels.backward,
                    kernels.fused_forward or fused_forward_of(kernels.forward),
                    kernels.fused_backward or fused_backward_of(kernels.backward), False)


class Backend(NamedTuple):
    name: str
    device_types: Optional[Tuple[str, ...]]  # None: any device
    load: Callable[[], Kernels]  # the availability check, run once; raises BackendUnavailable
    description: str  # for messages: "the native C++ CPU kernels"
    auto_order: Optional[int] = None  # backend="auto" tries lower first; None: never
    hint: str = ""  # how to make it available
    error: type = RuntimeError  # raised when it is asked for by name and cannot run


_TABLE = {}
_LOADED = {}  # name -> Complete or BackendUnavailable, once checked
_SELECTED = {}  # (backend argument, device type) -> (name, Kernels): what a call runs
_ENVIRONMENT = []  # INVOLUTION_BACKEND, once read


def register_backend(backend, replace=False):
    """Adds ``backend`` (a :class:`Backend`) to the table."""
    if backend.name == "auto":
        raise ValueError("involution: 'auto' is not a backend's name: it chooses among them")
    if backend.name in _TABLE and not replace:
        raise ValueError(f"involution: a backend named {backend.name!r} exists; pass "
                         "replace=True to replace it")
    _TABLE[backend.name] = backend
    refresh()


def unregister_backend(name):
    _TABLE.pop(name, None)
    refresh()


def refresh():
    """Forgets every cached choice and check, and rereads INVOLUTION_BACKEND (for tests, and
    after changing the environment in a running process)."""
    _LOADED.clear()
    _SELECTED.clear()
    _ENVIRONMENT.clear()


def backend_names():
    """"auto" and the names in the table."""
    return ("auto",) + tuple(_TABLE)


def check_name(name, who="involution"):
    if name != "auto" and name not in _TABLE:
        raise ValueError(f"{who}: unknown backend {name!r}; choose one of {backend_names()}")


def availability(name):
    """(Complete, None) where backend ``name`` runs here, else (None, BackendUnavailable)."""
    if name not in _LOADED:
        try:
            _LOADED[name] = complete(_TABLE[name].load())
        except BackendUnavailable as e:
            _LOADED[name] = e
    found = _LOADED[name]
    return (None, found) if isinstance(found, BackendUnavailable) else (found, None)


def _runs_on(backend, device_type):
    return backend.device_types is None or device_type in backend.device_types


def _auto(device_type):
    """The first available backend for ``device_type`` in auto order; one warning where a
    backend before it could not run (unless the user turned it off)."""
    candidates = sorted((b for b in _TABLE.values()
                         if b.auto_order is not None and _runs_on(b, device_type)),
                        key=lambda b: b.auto_order)
    skipped = []
    for backend in candidates:
        kernels, why = availability(backend.name)
        if kernels is None:
            skipped += [] if why.quiet else [f"{backend.name!r} ({backend.description}) is "
                                             f"unavailable: {why}"]
            continue
        if skipped:
            warnings.warn(f"involution: {'; '.join(skipped)}; backend='auto' falls back to "
                          f"{backend.name!r} ({backend.description}) on {device_type}.",
                          RuntimeWarning, stacklevel=5)
        return backend.name, kernels
    raise RuntimeError(f"involution: no backend runs on {device_type} tensors")


def _named(name, device_type):
    backend = _TABLE[name]
    if not _runs_on(backend, device_type):
        where = " or ".join(backend.device_types)
        raise ValueError(f"involution: backend={name!r} ({backend.description}) runs on {where} "
                         f"tensors, got tensors on {device_type}; use backend='auto'")
    kernels, why = availability(name)
    if kernels is None:
        raise backend.error(f"involution: backend={name!r} but {backend.description} are "
                            f"unavailable ({why}); {backend.hint or 'use another backend'}")
    return name, kernels


def select(backend, device_type):
    """(name, Complete kernels) that a call with ``backend`` runs on ``device_type`` tensors:
    looked up in a dict after the first call."""
    key = (backend, device_type)
    chosen = _SELECTED.get(key)
    if chosen is None:
        check_name(backend)
        if backend == "auto":
            if not _ENVIRONMENT:
                _ENVIRONMENT.append(os.environ.get(BACKEND_ENV, "auto"))
                if _ENVIRONMENT[0] not in backend_names():
                    raise ValueError(f"{BACKEND_ENV}={_ENVIRONMENT[0]!r} is not one of "
                                     f"{backend_names()}")
            wanted = _ENVIRONMENT[0]
            chosen = _auto(device_type) if wanted == "auto" else _named(wanted, device_type)
        else:
            chosen = _named(backend, device_type)
        _SELECTED[key] = chosen
    return chosen


def kernels_for(backend, device_type):
    chosen = _SELECTED.get((backend, device_type))
    return (chosen or select(backend, device_type))[1]
