"""involution-d2: involution and RedNet for Detectron2.

Importing the package registers every component in Detectron2's registries and every dataset
in its catalogs (as a Detectron2 project does), so that Detectron2's own tools run this
project's configs.  Without Detectron2, only the operator and the layers are usable
(``involution_d2.ops`` needs torch alone) and nothing is registered.

Its layers import only downwards (``tests/package/test_layers.py``), bottom to top:
environment, utils -> ops -> layers -> config -> modeling -> checkpoint, data, evaluation,
solver, analysis, export -> engine -> model_zoo.  ``utils`` holds what any layer may use:
the errors users can fix, atomic file writes, processes that stop with their parent, and
Detectron2's metrics file; the benchmarks live beside their tools (``tools/benchmarking``) and
the test fixtures' builders in ``tests/``.
"""
import importlib
import warnings

__version__ = "0.1.0"

with warnings.catch_warnings():
    # Detectron2's and fvcore's own deprecation notes (torch.jit.script, pkg_resources) are
    # not the business of a user who imports the operator.
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", UserWarning)
    try:
        importlib.import_module("detectron2")
    except ImportError:
        pass  # the operator and the layers work with torch alone
    else:
        from . import data, modeling  # noqa: F401  (registration on import)
