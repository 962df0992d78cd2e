"""A few minutes on a CPU: RedNet-26 Mask R-CNN with involution FPN, RPN and mask heads,
trained from scratch on the built-in shapes dataset (generated on first use, 128x128).
GroupNorm instead of FrozenBN: there are no pretrained statistics to freeze.
The LazyConfig twin of mask_rcnn_rednet26_invfpn_invhead_shapes.yaml."""
import torch
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.coco_1x import clip_gradients, dataloader, optimizer, train
from ..common.models.rcnn_rednet_fpn import model, use_involution_fpn, use_involution_heads

use_involution_fpn(model)
use_involution_heads(model)
# Names starting with "_" stay out of the config (LazyConfig keeps other module globals).
_rednet = model.backbone.bottom_up
_rednet.depth, _rednet.norm, _rednet.freeze_at = 26, "GN", 0
for _involutions in (_rednet.involution_kwargs, model.backbone.involution_kwargs,
                     model.proposal_generator.head.involution_kwargs,
                     model.roi_heads.mask_head.involution_kwargs):
    _involutions.norm = "GN"
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.batch_size_per_image = 128
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (256, 100)
model.roi_heads.num_classes = 3
model.roi_heads.batch_size_per_image = 32  # few ROIs: the mask head's cost grows with them
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)

dataloader.train.dataset.names = "shapes_train"
dataloader.test.dataset.names = "shapes_val"
dataloader.evaluator.dataset_name = "shapes_val"
# The shapes set has no COCO json file: COCOEvaluator writes one from the dataset here.
dataloader.evaluator.output_dir = "${train.output_dir}/inference"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=128,
                                                                max_size=128)]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = dataloader.test.num_workers = 1

clip_gradients(optimizer, max_norm=5.0)
optimizer.lr = 0.01
train.max_iter = 250
train.eval_period = 0  # evaluate once, at the end
train.checkpointer.period = 100
train.output_dir = "output/demo_mask_rcnn_shapes_lazy"
# Runs anywhere, also under Detectron2's own tools/lazyconfig_train_net.py.
train.device = "cuda" if torch.cuda.is_available() else "cpu"
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[200, 235, 250]),
    warmup_length=30 / 250,
    warmup_factor=0.001,
)
