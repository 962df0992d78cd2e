"""Detectron2 components; importing this registers them in Detectron2's registries."""
from .backbone import *  # noqa: F401,F403
from .meta_arch import *  # noqa: F401,F403
from .proposal_generator import *  # noqa: F401,F403
from .roi_heads import *  # noqa: F401,F403
from .sem_seg_heads import *  # noqa: F401,F403
