"""involution-d2: involution and RedNet for Detectron2."""
__version__ = "0.1.0"
