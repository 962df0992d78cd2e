"""Config defaults of the involution models (yacs); config files of either system with early
errors for typos: :mod:`.files`."""
from detectron2.config import CfgNode as CN

from ..layers import DEFAULT_GROUP_CHANNELS, DEFAULT_KERNEL_SIZE, DEFAULT_REDUCTION_RATIO

__all__ = ["add_involution_config", "involution_kwargs_from_config",
           "CLASSIFICATION_STEM_INVOLUTION_KERNEL", "DETECTION_STEM_INVOLUTION_KERNEL"]

# K of the stem's involution in the official RedNets: the ImageNet classification backbone
# (mmcls) uses 3, the detection and segmentation backbones (mmdet, mmseg) use 7.  The blocks
# use the involution K of ``involution_kwargs`` (7 in all official RedNets).
CLASSIFICATION_STEM_INVOLUTION_KERNEL = 3
DETECTION_STEM_INVOLUTION_KERNEL = 7


def add_involution_config(cfg):
    """Add the keys of RedNet backbones and involution necks/heads to a Detectron2 config."""
    cfg.MODEL.REDNET = CN()
    cfg.MODEL.REDNET.DEPTH = 50  # 26, 38, 50, 101, 152
    cfg.MODEL.REDNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Norm of the backbone (and of its involutions' kernel generation).
    cfg.MODEL.REDNET.NORM = "FrozenBN"
    cfg.MODEL.REDNET.STEM_OUT_CHANNELS = 64
    cfg.MODEL.REDNET.RES2_OUT_CHANNELS = 256
    # K of the stem's involution: 7 in the official detection and segmentation RedNets,
    # 3 in the official ImageNet classifier (its configs set it).
    cfg.MODEL.REDNET.STEM_INVOLUTION_KERNEL = DETECTION_STEM_INVOLUTION_KERNEL
    # Training memory (RedNet's arguments of the same names say more): recompute cheap
    # norm+ReLU outputs in backward (same results), and the official with_cp, checkpointing
    # the residual blocks (less memory, slower).
    cfg.MODEL.REDNET.RECOMPUTE_ACTIVATIONS = True
    cfg.MODEL.REDNET.WITH_CP = False

    cfg.MODEL.INVOLUTION = CN()
    cfg.MODEL.INVOLUTION.KERNEL_SIZE = DEFAULT_KERNEL_SIZE
    cfg.MODEL.INVOLUTION.GROUP_CHANNELS = DEFAULT_GROUP_CHANNELS
    cfg.MODEL.INVOLUTION.REDUCTION_RATIO = DEFAULT_REDUCTION_RATIO
    # "auto": CuPy kernels on CUDA when CuPy works, else the memory-efficient torch path.
    cfg.MODEL.INVOLUTION.BACKEND = "auto"
    # Norm in the kernel generation of the involutions of necks and heads.
    cfg.MODEL.INVOLUTION.NORM = "BN"

    # Semantic segmentation (Cityscapes): the official heads have dropout before the classifier.
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1
    cfg.MODEL.UPERNET = CN()
    cfg.MODEL.UPERNET.CHANNELS = 512
    cfg.MODEL.UPERNET.POOL_SCALES = [1, 2, 3, 6]
    # Auxiliary head trained beside the main one (EncoderDecoderSegmentor); "" for none.
    cfg.MODEL.AUX_SEM_SEG_HEAD = CN()
    cfg.MODEL.AUX_SEM_SEG_HEAD.NAME = ""
    cfg.MODEL.AUX_SEM_SEG_HEAD.IN_FEATURE = "res4"
    cfg.MODEL.AUX_SEM_SEG_HEAD.CONVS_DIM = 256
    cfg.MODEL.AUX_SEM_SEG_HEAD.NUM_CONVS = 1
    cfg.MODEL.AUX_SEM_SEG_HEAD.NORM = "SyncBN"
    cfg.MODEL.AUX_SEM_SEG_HEAD.DROPOUT = 0.1
    cfg.MODEL.AUX_SEM_SEG_HEAD.LOSS_WEIGHT = 0.4
    # Inference of EncoderDecoderSegmentor: "whole" image or "slide" (windows of CROP_SIZE
    # every CROP_STRIDE pixels, height x width).
    cfg.MODEL.SEM_SEG_INFERENCE = CN()
    cfg.MODEL.SEM_SEG_INFERENCE.MODE = "whole"
    cfg.MODEL.SEM_SEG_INFERENCE.CROP_SIZE = (512, 1024)
    cfg.MODEL.SEM_SEG_INFERENCE.CROP_STRIDE = (341, 683)
    # Poly learning-rate decay to a floor (OpenMMLab's poly with min_lr), for
    # SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR".
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_MIN = 1e-4

    # ImageNet classification (ImageNetClassifier): RedNet with its linear classifier.
    cfg.MODEL.CLASSIFIER = CN()
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 1000
    cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING = 0.1  # the official recipe's LabelSmoothLoss
    # Shorter side before the center crop of the test pipeline (mmcls: resize 256, crop 224).
    cfg.INPUT.CLASSIFICATION_RESIZE_TEST = 256
    cfg.INPUT.CLASSIFICATION_CROP = 224

    # Input pipeline (a name in involution_d2.data.DATA_PIPELINE_REGISTRY): how the datasets
    # become model inputs. "Detectron2Pipeline": Detectron2's DatasetMapper and INPUT keys;
    # "CityscapesSemSegPipeline": the official Cityscapes training augmentations;
    # "ClassificationPipeline": the official ImageNet crops (ClassificationDatasetMapper).
    cfg.DATALOADER.PIPELINE = "Detectron2Pipeline"
    # Images per test batch (Detectron2's test loaders take 1 unless told).
    cfg.TEST.IMS_PER_BATCH = 1
    # Random rescale of CityscapesSemSegPipeline (mmseg's ratio_range and img_scale): the
    # image is fitted to BASE_SIZE (height, width) times a factor drawn in RANGE. Its crop is
    # Detectron2's INPUT.CROP (ENABLED, TYPE, SIZE, SINGLE_CATEGORY_MAX_AREA).
    cfg.INPUT.RESIZE_SCALE = CN()
    cfg.INPUT.RESIZE_SCALE.RANGE = (0.5, 2.0)
    cfg.INPUT.RESIZE_SCALE.BASE_SIZE = (1024, 2048)
    # Largest share of the crop one class may cover (mmseg's cat_max_ratio; the key of
    # Detectron2's DeepLab project); 1.0: any crop.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0


def involution_kwargs_from_config(cfg, norm=None):
    """The :class:`~involution_d2.layers.Involution` arguments that cfg.MODEL.INVOLUTION sets,
    for the from_config of every backbone, neck and head (norm: override its NORM)."""
    inv = cfg.MODEL.INVOLUTION
    return {
        "kernel_size": inv.KERNEL_SIZE,
        "group_channels": inv.GROUP_CHANNELS,
        "reduction_ratio": inv.REDUCTION_RATIO,
        "backend": inv.BACKEND,
        "norm": inv.NORM if norm is None else norm,
    }
