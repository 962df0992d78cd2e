"""The predictor is Detectron2's DefaultPredictor (its __call__), built from either config
system with the test pipeline of the config: detection, semantic segmentation and
classification each predict on a BGR image.

A 48x64 image keeps it fast and makes the test pipelines resize it (the demo configs resize
the shorter side to 128, capped at 128: 96x128; classification, here resized to 64 and
cropped to 56, overridden from 256/224), so that "at the input image's size" is a real
check. The models keep their random initialisation (seeded): the tests check the form and
the consistency of the outputs, not their quality."""
import numpy as np
import pytest
import torch

from helpers import CONFIG_ROOT, requires_detectron2, yacs_config

pytestmark = requires_detectron2

DETECTION = "Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.py"
SEMANTIC = "Demo/semantic_fpn_rednet26_invfpn_shapes"
CLASSIFICATION = "ImageNet-Classification/rednet26"
HEIGHT, WIDTH = 48, 64
CLASSIFIER_CLASSES = 7  # not ImageNet's 1000: the output follows the config


def config(name):
    import os

    from involution_d2.config.files import setup_config

    if name.endswith(".py"):
        return setup_config(os.path.join(CONFIG_ROOT, name))
    overrides = {}
    if name == CLASSIFICATION:
        overrides = {"INPUT.CLASSIFICATION_RESIZE_TEST": 64, "INPUT.CLASSIFICATION_CROP": 56,
                     "MODEL.CLASSIFIER.NUM_CLASSES": CLASSIFIER_CLASSES}
    return yacs_config(name, overrides=overrides)


@pytest.fixture(scope="module")
def predicted():
    """name -> (predictor, BGR image, its predictions): each model built once per module."""
    from involution_d2.engine.predictor import Predictor

    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            predictor = Predictor(config(name))
            image = (np.random.RandomState(0).rand(HEIGHT, WIDTH, 3) * 255).astype("uint8")
            cache[name] = (predictor, image, predictor(image))
        return cache[name]

    return get


def model_input_by_hand(name, predictor, image):
    """What DefaultPredictor.__call__ must give the model, written out for each config: the
    channels in the model's order, the config's test resize (and crop) with the sizes
    computed by hand, float32 (C, H, W), and the original height and width."""
    from PIL import Image

    from detectron2.data import transforms as T

    if predictor.input_format == "RGB":
        image = image[:, :, ::-1]
    if name == CLASSIFICATION:
        # Shorter side 48 -> 64, longer int(64 * 64 / 48) = 85; a central 56x56 crop at
        # x0 = round(29 / 2) = 14 (round half to even, as the pipeline rounds), y0 = 4.
        expected = T.CropTransform(14, 4, 56, 56).apply_image(
            T.ResizeTransform(48, 64, 64, 85, Image.BILINEAR).apply_image(image))
        assert expected.shape[:2] == (56, 56)
    else:
        # Shorter side to 128 gives 128x171, over the cap of 128: scaled by 2 to 96x128.
        expected = T.ResizeTransform(48, 64, 96, 128, Image.BILINEAR).apply_image(image)
    return {"image": torch.as_tensor(expected.astype("float32").transpose(2, 0, 1)),
            "height": HEIGHT, "width": WIDTH}


def assert_same_outputs(a, b, where=""):
    """Equal, exactly: the same model on the same input, in the same process."""
    from detectron2.structures import Boxes, Instances

    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for key in a:
            assert_same_outputs(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, Instances):
        assert isinstance(b, Instances) and a.image_size == b.image_size, where
        assert list(a.get_fields()) == list(b.get_fields()), where
        for key in a.get_fields():
            assert_same_outputs(a.get(key), b.get(key), f"{where}.{key}")
    elif isinstance(a, Boxes):
        assert_same_outputs(a.tensor, b.tensor, where)
    else:
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype,
                                                           a.shape, b.shape)
        assert torch.equal(a, b), f"{where}: the predictor's output differs from the model's"


@pytest.mark.parametrize("name, output", [
    (DETECTION, "instances"),
    (SEMANTIC, "sem_seg"),
    (CLASSIFICATION, "pred_logits"),
])
def test_predictor_is_default_predictor_for_every_pipeline(predicted, name, output):
    """DefaultPredictor semantics: the predictions are the model's own outputs for the
    image preprocessed as the config's test pipeline says (not merely the right key)."""
    from detectron2.engine import DefaultPredictor

    predictor, image, predictions = predicted(name)
    assert isinstance(predictor, DefaultPredictor)
    assert list(predictions) == [output]
    assert not predictor.model.training
    with torch.no_grad():
        direct = predictor.model([model_input_by_hand(name, predictor, image)])[0]
    assert_same_outputs(predictions, direct)
    if output == "sem_seg":  # at the input's size, as DefaultPredictor post-processes
        assert tuple(predictions["sem_seg"].shape[1:]) == (HEIGHT, WIDTH)


def test_detection_returns_instances_of_the_input_image(predicted):
    predictor, _, predictions = predicted(DETECTION)
    instances = predictions["instances"]
    # Resized back from the 96x128 the model saw to the image's own size.
    assert instances.image_size == (HEIGHT, WIDTH)
    assert set(instances.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    n = len(instances)
    # The random model finds many boxes: the checks below are not on an empty set.
    box_predictor = predictor.model.roi_heads.box_predictor
    assert 0 < n <= box_predictor.test_topk_per_image
    boxes = instances.pred_boxes.tensor
    assert boxes.shape == (n, 4) and instances.scores.shape == (n,)
    assert instances.pred_classes.shape == (n,) and instances.pred_classes.dtype == torch.int64
    # Masks pasted into the image at its size, one per box.
    assert instances.pred_masks.shape == (n, HEIGHT, WIDTH)
    assert instances.pred_masks.dtype == torch.bool
    # Boxes clipped to the image, not empty.
    x0, y0, x1, y1 = boxes.unbind(1)
    assert bool((x0 >= 0).all() and (y0 >= 0).all()), boxes
    assert bool((x1 <= WIDTH).all() and (y1 <= HEIGHT).all()), boxes
    assert bool((x1 > x0).all() and (y1 > y0).all()), boxes
    # Classes of the dataset: the three shapes, as the model's head has them.
    classes = predictor.metadata.thing_classes
    assert classes == ["circle", "square", "triangle"]
    assert predictor.model.roi_heads.num_classes == len(classes)
    assert bool(((instances.pred_classes >= 0) & (instances.pred_classes < len(classes))).all())


def test_detection_scores_are_sorted_probabilities_above_the_configs_threshold(predicted):
    predictor, image, predictions = predicted(DETECTION)
    scores = predictions["instances"].scores
    threshold = predictor.model.roi_heads.box_predictor.test_score_thresh
    assert threshold == 0.05  # the config's (Detectron2's default)
    assert bool((scores > threshold).all() and (scores <= 1).all()), scores
    assert torch.equal(scores, scores.sort(descending=True).values)
    # A higher threshold keeps exactly the detections above it, the best first: per-class NMS
    # suppresses a box only by a better one, so the survivors do not change.
    higher = float(scores.median())
    box_predictor = predictor.model.roi_heads.box_predictor
    box_predictor.test_score_thresh = higher
    try:
        fewer = predictor(image)["instances"]
    finally:
        box_predictor.test_score_thresh = threshold
    keep = predictions["instances"][predictions["instances"].scores > higher]
    assert 0 < len(fewer) < len(scores)
    assert_same_outputs({"instances": fewer}, {"instances": keep})


def test_semantic_segmentation_returns_class_scores_at_the_input_images_size(predicted):
    predictor, _, predictions = predicted(SEMANTIC)
    sem_seg = predictions["sem_seg"]
    num_classes = predictor.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    # background + the three shapes, in the config and in the dataset's metadata
    assert num_classes == 4 == len(predictor.metadata.stuff_classes)
    assert sem_seg.shape == (num_classes, HEIGHT, WIDTH)
    # Per-class scores (logits, resized back to the image), finite for every pixel.
    assert sem_seg.dtype == torch.float32 and bool(torch.isfinite(sem_seg).all())


def test_classification_returns_one_logit_per_class_of_the_config(predicted):
    predictor, _, predictions = predicted(CLASSIFICATION)
    logits = predictions["pred_logits"]
    # The classifier returns logits (not probabilities): one per class of the config.
    assert logits.shape == (CLASSIFIER_CLASSES,)
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
    probabilities = logits.softmax(0)
    assert abs(float(probabilities.sum()) - 1) < 1e-6
    assert predictor.input_format == "RGB"  # the ImageNet weights' channel order
