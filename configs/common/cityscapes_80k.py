"""Cityscapes (fine) data and the official 80k schedule: 8 images per batch of 512x1024 crops,
SGD lr 0.01, momentum 0.9, weight decay 5e-4 (on every parameter), poly decay (power 0.9)
to 1e-4; mIoU with Detectron2's SemSegEvaluator.  Data: $DETECTRON2_DATASETS/cityscapes."""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.evaluation import SemSegEvaluator
from omegaconf import OmegaConf

from involution_d2.data import cityscapes_sem_seg_dicts, cityscapes_train_augmentations
from involution_d2.solver import poly_lr_multiplier

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(cityscapes_sem_seg_dicts)(dataset_name="cityscapes_fine_sem_seg_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        # random rescale 0.5-2.0 of 2048x1024, 512x1024 crop (<= 75 % one class), flip,
        # photometric distortion
        augmentations=L(cityscapes_train_augmentations)(image_format="RGB"),
        image_format="RGB",
    ),
    total_batch_size=8,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(cityscapes_sem_seg_dicts)(dataset_name="cityscapes_fine_sem_seg_val"),
    # keep-ratio resize to fit 2048x1024, the official test scale (no change to Cityscapes)
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=1024, max_size=2048)],
        image_format="RGB",
    ),
    num_workers=4,
)
dataloader.evaluator = L(SemSegEvaluator)(dataset_name="cityscapes_fine_sem_seg_val")

train = model_zoo.get_config("common/train.py").train
train.max_iter = 80000
train.eval_period = 8000
train.checkpointer.period = 8000
train.init_checkpoint = ""  # converted ImageNet RedNet weights (tools/convert_official_weights.py)

optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.01
optimizer.momentum = 0.9
optimizer.weight_decay = 5e-4
optimizer.params.weight_decay_norm = 5e-4

# Down to the absolute floor 1e-4 whatever optimizer.lr is.
lr_multiplier = L(poly_lr_multiplier)(base_lr="${optimizer.lr}", min_lr=1e-4, power=0.9)
