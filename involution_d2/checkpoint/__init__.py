"""Loading the official OpenMMLab RedNet weights into this project's models."""
from .official import (
    AUTHOR,
    KINDS,
    STEM_KERNEL_GENERATION,
    CheckpointFormatError,
    convert,
    detect_family,
    load_official_state_dict,
    mmdet_to_detectron2_anchor_order,
    rednet_depth,
    stem_involution_kernel,
    stem_kernel_generation_note,
    to_detectron2_checkpoint,
)
from .save import atomic_write, save_atomically

__all__ = [
    "AUTHOR",
    "KINDS",
    "STEM_KERNEL_GENERATION",
    "CheckpointFormatError",
    "atomic_write",
    "convert",
    "detect_family",
    "load_official_state_dict",
    "mmdet_to_detectron2_anchor_order",
    "rednet_depth",
    "save_atomically",
    "stem_involution_kernel",
    "stem_kernel_generation_note",
    "to_detectron2_checkpoint",
]
