"""The predictor is Detectron2's DefaultPredictor (its __call__), built from either config
system with the test pipeline of the config: detection, semantic segmentation and
classification each predict on a BGR image."""
import numpy as np
import pytest

from helpers import CONFIG_ROOT, requires_detectron2, yacs_config

pytestmark = requires_detectron2


@pytest.mark.parametrize("config, output", [
    ("Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.py", "instances"),
    ("Demo/semantic_fpn_rednet26_invfpn_shapes", "sem_seg"),
    ("ImageNet-Classification/rednet26", "pred_logits"),
])
def test_predictor_is_default_predictor_for_every_pipeline(config, output):
    import os

    from detectron2.engine import DefaultPredictor

    from involution_d2.config.files import setup_config
    from involution_d2.engine.predictor import Predictor

    cfg = (setup_config(os.path.join(CONFIG_ROOT, config)) if config.endswith(".py")
           else yacs_config(config))
    predictor = Predictor(cfg)
    assert isinstance(predictor, DefaultPredictor)
    image = (np.random.RandomState(0).rand(96, 128, 3) * 255).astype("uint8")
    predictions = predictor(image)
    assert list(predictions) == [output]
    if output == "sem_seg":  # at the input's size, as DefaultPredictor post-processes
        assert tuple(predictions["sem_seg"].shape[1:]) == (96, 128)
