"""RedNet (involution ResNet) backbones for Detectron2.

The stages are Detectron2's :class:`ResNet` (so ``res2``..``res5``, ``output_shape()`` and
``freeze_at`` behave exactly as for ResNet); the stem and the bottleneck blocks are RedNet's,
with the official submodule names, so that an OpenMMLab checkpoint maps by prefix alone:
``backbone.stem.`` -> ``stem.``, ``backbone.layer{k}.`` -> ``res{k+1}.``.
"""
import functools

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, ResNet

from ...config import (CLASSIFICATION_STEM_INVOLUTION_KERNEL, DETECTION_STEM_INVOLUTION_KERNEL,
                       involution_kwargs_from_config)
from ...layers import ConvNormAct, Involution, get_norm
from ...layers.recompute import checkpointed, recompute_into, relu_max_pool

__all__ = ["RedNetStem", "RedNetBottleneck", "RedNet", "build_rednet_backbone",
           "REDNET_DEPTHS", "CHECKPOINT_SEGMENT_BLOCKS", "CLASSIFICATION_STEM_INVOLUTION_KERNEL",
           "DETECTION_STEM_INVOLUTION_KERNEL"]

# Blocks per stage of each RedNet depth.
REDNET_DEPTHS = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


# Residual blocks per checkpoint with ``with_cp``: two keep half the blocks' inputs (each
# block is recomputed once, as when checkpointed alone), for two blocks' activations at once
# in backward.
CHECKPOINT_SEGMENT_BLOCKS = 2


@torch.jit.unused
def _run_plain(blocks, x):
    # The blocks' plain path: a checkpoint or a recomputation inside a checkpoint would only
    # run them once more.
    for block in blocks:
        x = block._plain(x)
    return x


@torch.jit.unused
def _needs_gradients(block, x):
    """Whether a backward will run through ``block``: a frozen block whose input needs no
    gradient keeps nothing for backward, so checkpointing it would only keep its input."""
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in block.parameters()))


class RedNetStem(CNNBlockBase):
    """3x3 conv (stride 2) -> involution -> norm -> ReLU -> 3x3 conv -> max-pool: stride 4.

    Children are numbered like the official ``nn.Sequential`` stem (0, 1, 2, 3, 4).
    ``involution_kernel`` is the stem involution's K: 3 in the official ImageNet
    classification RedNet, 7 in the official detection and segmentation RedNets.
    """

    def __init__(self, in_channels=3, out_channels=64, *, norm="BN",
                 involution_kernel=DETECTION_STEM_INVOLUTION_KERNEL, involution_kwargs=None):
        super().__init__(in_channels, out_channels, 4)
        mid = out_channels // 2
        kw = dict(norm=norm)
        kw.update(involution_kwargs or {})
        kw["kernel_size"] = involution_kernel
        self.add_module("0", ConvNormAct(in_channels, mid, 3, 2, norm=norm))
        self.add_module("1", Involution(mid, stride=1, **kw))
        self.add_module("2", get_norm(norm, mid))
        self.add_module("3", nn.ReLU(inplace=True))
        self.add_module("4", ConvNormAct(mid, out_channels, 3, 1, norm=norm))
        for name in ("0", "4"):
            weight_init.c2_msra_fill(getattr(self, name).conv)

        self.recompute_activations = True  # see RedNet
        self.with_cp = False

    def forward(self, x):
        if not torch.jit.is_scripting():
            if self.with_cp and self.training and _needs_gradients(self, x):
                return self._checkpointed(x)
            if self.recompute_activations and not torch.jit.is_tracing():
                return self._recomputing(x)
        return self._plain(x)

    def _plain(self, x):
        # One literal name each: TorchScript reads attributes by literal names only.
        x = getattr(self, "0")(x)
        x = getattr(self, "1")(x)
        x = getattr(self, "2")(x)
        x = getattr(self, "3")(x)
        x = getattr(self, "4")(x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)

    @torch.jit.unused
    def _checkpointed(self, x):
        return checkpointed(self._plain, self, x)

    @torch.jit.unused
    def _recomputing(self, x):
        first, last = getattr(self, "0"), getattr(self, "4")  # 3 input channels: cheap again
        x = recompute_into(getattr(self, "1"), x, first.norm, first.conv)

        def last_and_pool(x):
            # The stem's largest tensor is its ReLU output, which ReLU and pooling both keep:
            # here the pooling's window offsets are kept instead (two bytes a pooled element).
            x = last.conv(x)
            return relu_max_pool(last.norm(x) if last.norm is not None else x, 3, 2, 1)

        return recompute_into(last_and_pool, x, getattr(self, "2"))


class RedNetBottleneck(CNNBlockBase):
    """1x1 conv -> involution (carries the stride: "pytorch" style) -> 1x1 conv, plus the
    identity (projected by a strided 1x1 conv when the shape changes)."""

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1, norm="BN",
                 involution_kwargs=None):
        super().__init__(in_channels, out_channels, stride)
        kw = dict(norm=norm)
        kw.update(involution_kwargs or {})
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, 1, bias=False)
        self.bn1 = get_norm(norm, bottleneck_channels)
        self.conv2 = Involution(bottleneck_channels, stride=stride, **kw)
        self.bn2 = get_norm(norm, bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.bn3 = get_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                get_norm(norm, out_channels),
            )
            weight_init.c2_msra_fill(self.downsample[0])
        else:
            self.downsample = None
        for conv in (self.conv1, self.conv3):
            weight_init.c2_msra_fill(conv)
        # Zero-init the residual branch's last norm where its scale is trained (as
        # OpenMMLab's ResNets do): each block starts as the identity.  Involution's output
        # is quadratic in its input (its kernels are generated from it), so an untrained
        # deep RedNet would otherwise overflow.  Not for FrozenBN, whose scale would stay
        # zero: FrozenBN is for fine-tuning pretrained weights.
        if isinstance(getattr(self.bn3, "weight", None), nn.Parameter):
            with torch.no_grad():
                self.bn3.weight.zero_()
        self.recompute_activations = True  # see RedNet
        # Strided blocks: whether the involution's input is made again in backward by conv1
        # from the block input (True), or kept (where the norm is trained: conv1's output,
        # which it keeps anyway, from which it is made again element-wise). RedNet decides.
        self.rerun_conv1 = True
        self.with_cp = False

    def forward(self, x):
        if not torch.jit.is_scripting():
            if self.with_cp and self.training and _needs_gradients(self, x):
                return self._checkpointed(x)
            if self.recompute_activations and not torch.jit.is_tracing():
                return self._finish(self._residual_recomputing(x), x)
        return self._plain(x)

    def _plain(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._finish(self.bn3(self.conv3(out)), x)

    def _finish(self, out, x):
        # The sum and ReLU in place, as in Detectron2's BottleneckBlock: no extra
        # block-sized tensor per block.
        out += self.downsample(x) if self.downsample is not None else x
        return F.relu_(out)

    @torch.jit.unused
    def _checkpointed(self, x):
        return checkpointed(self._plain, self, x)

    @torch.jit.unused
    def _residual_recomputing(self, x):
        if self.stride > 1 and self.rerun_conv1:
            # The involution strides: its input is at the block input's resolution, the
            # largest tensor of the block. Rebuilt from the block input (kept anyway, for
            # conv1 and the projection), by conv1 again.
            out = recompute_into(self.conv2, x, self.bn1, self.conv1)
        else:
            out = recompute_into(self.conv2, self.conv1(x), self.bn1)
        return self.bn3(recompute_into(self.conv3, out, self.bn2))


class RedNet(ResNet):
    """Detectron2's ResNet assembled from RedNet's stem and blocks."""

    @configurable
    def __init__(self, *, depth=50, in_channels=3, stem_out_channels=64,
                 res2_out_channels=256, norm="BN", out_features=None, freeze_at=0,
                 num_classes=None, stem_involution_kernel=DETECTION_STEM_INVOLUTION_KERNEL,
                 involution_kwargs=None, recompute_activations=True, with_cp=False):
        """
        Args:
            depth (int): 26, 38, 50, 101 or 152.
            in_channels (int): input image channels.
            stem_out_channels (int): channels out of the stem (64 in RedNet).
            res2_out_channels (int): channels out of res2; bottlenecks are a quarter of it.
            norm (str or callable): norm of every layer, by Detectron2's name.
            out_features (list[str]): among "stem", "res2".."res5" (and "linear" with
                num_classes); default: the last one.
            freeze_at (int): Detectron2's meaning: 1 freezes the stem, 2 also res2, ...
            num_classes (int or None): add global pooling and a linear classifier.
            stem_involution_kernel (int): K of the stem's involution: 3 as in the official
                ImageNet classifier, 7 as in the official detectors and segmentors.
            involution_kwargs (dict): extra arguments of every :class:`Involution`
                (kernel_size, reduction_ratio, group_channels, backend, ...).
            recompute_activations (bool): in training, recompute in backward the norm+ReLU
                outputs that are cheap to make again instead of keeping them: the
                involutions' inputs in the stem and, where the stem is frozen, in the strided
                blocks (a trained stem's savings pay for keeping those), their reduced
                features, and where the norm keeps its input anyway (BN, GN) every block's
                (``involution_d2.layers.recompute``). Same outputs and gradients.
            with_cp (bool): the official option: checkpoint the residual blocks (run them
                again in backward, keeping their inputs only), and here the stem too, trading
                speed for memory. The blocks of a stage are checkpointed two at a time
                (:data:`CHECKPOINT_SEGMENT_BLOCKS`): each still runs once more in backward,
                as when checkpointed alone, but only every other block's input is kept
                (the blocks' own forward hooks do not run then). BatchNorm statistics are
                updated once.
        """
        if depth not in REDNET_DEPTHS:
            raise ValueError(f"RedNet depth must be one of {sorted(REDNET_DEPTHS)}, got {depth}")
        stem = RedNetStem(in_channels, stem_out_channels, norm=norm,
                          involution_kernel=stem_involution_kernel,
                          involution_kwargs=involution_kwargs)
        stages = []
        in_ch, out_ch = stem_out_channels, res2_out_channels
        for idx, num_blocks in enumerate(REDNET_DEPTHS[depth]):
            stages.append(ResNet.make_stage(
                RedNetBottleneck, num_blocks,
                stride_per_block=[1 if idx == 0 else 2] + [1] * (num_blocks - 1),
                in_channels=in_ch, out_channels=out_ch, bottleneck_channels=out_ch // 4,
                norm=norm, involution_kwargs=involution_kwargs,
            ))
            in_ch, out_ch = out_ch, out_ch * 2
        # A plain list (LazyConfig passes an OmegaConf ListConfig, which TorchScript rejects).
        out_features = list(out_features) if out_features is not None else None
        super().__init__(stem, stages, num_classes=num_classes, out_features=out_features,
                         freeze_at=freeze_at)
        self.depth = depth
        self.with_cp = with_cp
        for module in self.modules():
            if isinstance(module, (RedNetStem, RedNetBottleneck, Involution)):
                module.recompute_activations = recompute_activations
            if isinstance(module, (RedNetStem, RedNetBottleneck)):
                module.with_cp = with_cp

    def forward(self, x):
        """Detectron2's ``ResNet.forward``, except that in training with ``with_cp`` each
        stage runs its blocks checkpointed in segments (``_checkpointed_stage``)."""
        assert x.dim() == 4, f"RedNet takes an input of shape (N, C, H, W). Got {x.shape} instead!"
        outputs = {}
        if not torch.jit.is_scripting() and self.training and not torch.compiler.is_compiling():
            self._plan_recomputation()
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            if not torch.jit.is_scripting() and self.with_cp and self.training:
                x = self._checkpointed_stage(name, x)
            else:
                x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = self.avgpool(x)
            x = torch.flatten(x, 1)
            x = self.linear(x)
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs

    @torch.jit.unused
    def _plan_recomputation(self):
        # A trained stem keeps 160 bytes per pixel of its half-resolution grid (the
        # involution's 32-channel output, and the pooling's two-byte window offsets at a
        # quarter of the pixels) against 384 in ResNet-50's stem (its 64-channel ReLU output
        # and int64 pooling indices), besides the image that both keep.  That pays for
        # keeping, rather than making again by conv1 in backward, the strided blocks'
        # involution inputs (res3: 128, res4: 64 bytes per such pixel; res5's conv1 is not
        # run again anyway, see RECOMPUTE_MAX_MACS_PER_ELEMENT), whose convolutions are most
        # of the cost of recomputing: 2 G multiply-adds each at 800x1216.  With a frozen
        # stem, the stages alone must stay within ResNet-50's bytes, and conv1 runs again.
        stem_trained = any(p.requires_grad for p in self.stem.parameters())
        for stage in self.stages:
            for block in stage:
                if isinstance(block, RedNetBottleneck) and block.stride > 1:
                    block.rerun_conv1 = not stem_trained

    @torch.jit.unused
    def _checkpointed_stage(self, name: str, x):
        # A checkpoint keeps its input only; in segments of blocks, the inner blocks' inputs
        # (the previous blocks' outputs) are made again in backward with the rest of the
        # segment's activations instead of being kept, at no extra compute.
        blocks = list(getattr(self, name))
        for start in range(0, len(blocks), CHECKPOINT_SEGMENT_BLOCKS):
            segment = blocks[start:start + CHECKPOINT_SEGMENT_BLOCKS]
            if any(_needs_gradients(block, x) for block in segment):
                x = checkpointed(functools.partial(_run_plain, segment), segment, x)
            else:  # frozen: nothing is kept for backward
                for block in segment:
                    x = block(x)
        return x

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        in_channels = input_shape.channels if input_shape is not None else len(
            cfg.MODEL.PIXEL_MEAN)
        return {
            "depth": cfg.MODEL.REDNET.DEPTH,
            "in_channels": in_channels,
            "stem_out_channels": cfg.MODEL.REDNET.STEM_OUT_CHANNELS,
            "res2_out_channels": cfg.MODEL.REDNET.RES2_OUT_CHANNELS,
            "norm": cfg.MODEL.REDNET.NORM,
            "out_features": cfg.MODEL.REDNET.OUT_FEATURES,
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
            "stem_involution_kernel": cfg.MODEL.REDNET.STEM_INVOLUTION_KERNEL,
            "involution_kwargs": involution_kwargs_from_config(cfg, norm=cfg.MODEL.REDNET.NORM),
            "recompute_activations": cfg.MODEL.REDNET.RECOMPUTE_ACTIVATIONS,
            "with_cp": cfg.MODEL.REDNET.WITH_CP,
        }


@BACKBONE_REGISTRY.register()
def build_rednet_backbone(cfg, input_shape: ShapeSpec):
    """RedNet from ``cfg.MODEL.REDNET`` and ``cfg.MODEL.INVOLUTION``."""
    return RedNet(cfg, input_shape)
