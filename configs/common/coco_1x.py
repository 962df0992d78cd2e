"""COCO data and the official 1x schedule: 90k iterations of 16 images (12 epochs), SGD
lr 0.02 (RetinaNet 0.01), momentum 0.9, weight decay 1e-4, 2000 linear warm-up iterations
from 0.001x, lr x0.1 at 60k and 80k (epochs 8 and 11); single-scale 800 training as in the
official configs."""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from involution_d2.solver import sgd_with_grad_clip

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.image_format = "RGB"
dataloader.test.mapper.image_format = "RGB"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(800,), max_size=1333, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 16

train = model_zoo.get_config("common/train.py").train
train.max_iter = 90000
# Evaluate every epoch of COCO train2017 (117,266 images / 16), as the official configs.
train.eval_period = 7330
train.init_checkpoint = ""  # converted ImageNet RedNet weights (tools/convert_official_weights.py)

optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.02

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[60000, 80000, 90000]
    ),
    warmup_length=2000 / 90000,
    warmup_method="linear",
    warmup_factor=0.001,
)


def clip_gradients(optimizer, max_norm):
    """Turn the SGD config into SGD with full-model gradient-norm clipping."""
    optimizer._target_ = sgd_with_grad_clip
    optimizer.max_norm = max_norm
