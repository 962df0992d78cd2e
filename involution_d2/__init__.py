"""involution-d2: involution and RedNet for Detectron2.

Importing the package registers every component in Detectron2's registries and every dataset
in its catalogs (as a Detectron2 project does), so that Detectron2's own tools run this
project's configs.  Without Detectron2, only the operator and the layers are usable
(``involution_d2.ops`` needs torch alone) and nothing is registered.
"""
import importlib.util

__version__ = "0.1.0"

if importlib.util.find_spec("detectron2") is not None:
    from . import data, modeling  # noqa: F401  (registration on import)
