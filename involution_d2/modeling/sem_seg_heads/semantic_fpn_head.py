"""The official semantic FPN head: Detectron2's SemSegFPNHead plus what OpenMMLab's
FPNHead has: dropout (0.1) before the classifier and a classifier initialised N(0, 0.01)."""
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn

__all__ = ["SemanticFPNHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SemanticFPNHead(SemSegFPNHead):
    @configurable
    def __init__(self, input_shape, *, dropout=0.1, **kwargs):
        """
        Args:
            dropout (float): dropout probability before the 1x1 classifier.
            others: as :class:`SemSegFPNHead`.
        """
        # By keyword: a positional DictConfig would look like a cfg to @configurable.
        super().__init__(input_shape=input_shape, **kwargs)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        # The official classifier starts near zero (initial loss ~ log(classes)).
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["dropout"] = cfg.MODEL.SEM_SEG_HEAD.DROPOUT
        return ret

    def layers(self, features):
        x = self.scale_heads[0](features[self.in_features[0]])
        for f, head in zip(self.in_features[1:], self.scale_heads[1:]):
            x = x + head(features[f])
        if self.dropout is not None:
            x = self.dropout(x)
        return self.predictor(x)
