from .fcn_head import FCNHead
from .semantic_fpn_head import SemanticFPNHead
from .upernet_head import UPerNetHead

__all__ = ["FCNHead", "SemanticFPNHead", "UPerNetHead"]
