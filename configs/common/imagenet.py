"""ImageNet data and the official RedNet recipe: 130 epochs of 2048 images (81,380
iterations), SGD lr 0.8, Nesterov momentum 0.9, weight decay 1e-4 on every parameter,
3130 linear warm-up iterations from 0.25x, then cosine decay to 0.  Training crops are
random-resized 224 with flips; test images are resized to 256 (shorter side) and
center-cropped to 224.  Data: $DETECTRON2_DATASETS/imagenet/{train,val}/<class>/*.JPEG."""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler
from omegaconf import OmegaConf

from involution_d2.data import ClassificationDatasetMapper, classification_augmentations
from involution_d2.evaluation import ClassificationEvaluator

MAX_ITER = 81380  # 130 epochs of ceil(1,281,167 / 2048) iterations
dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    # Classification dicts have no "annotations" to filter by.
    dataset=L(get_detection_dataset_dicts)(names="imagenet_train", filter_empty=False),
    mapper=L(ClassificationDatasetMapper)(
        is_train=True, augmentations=L(classification_augmentations)(is_train=True),
        image_format="RGB"),
    total_batch_size=2048,
    aspect_ratio_grouping=False,  # crops are all 224 x 224
    num_workers=8,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="imagenet_val", filter_empty=False),
    mapper=L(ClassificationDatasetMapper)(
        is_train=False, augmentations=L(classification_augmentations)(is_train=False),
        image_format="RGB"),
    batch_size=64,
    num_workers=8,
)
dataloader.evaluator = L(ClassificationEvaluator)(dataset_name="imagenet_val")

train = model_zoo.get_config("common/train.py").train
train.max_iter = MAX_ITER
train.eval_period = 6260
train.checkpointer.period = 6260
train.init_checkpoint = ""  # converted official weights (tools/convert_official_weights.py)

optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.8
optimizer.momentum = 0.9
optimizer.nesterov = True
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = 1e-4

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=3130 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.25,
)
