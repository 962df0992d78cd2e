"""The project's checkpointer (safe loading, atomic saving) and the official OpenMMLab RedNet
weights converted for this project's models."""
from .detection_checkpoint import AtomicCheckpointer
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

__all__ = [
    "AtomicCheckpointer",
    "AUTHOR",
    "KINDS",
    "STEM_KERNEL_GENERATION",
    "CheckpointFormatError",
    "convert",
    "detect_family",
    "load_official_state_dict",
    "mmdet_to_detectron2_anchor_order",
    "rednet_depth",
    "stem_involution_kernel",
    "stem_kernel_generation_note",
    "to_detectron2_checkpoint",
]
