"""The stem involution's K: 3 in the ImageNet classifiers, 7 in detection and segmentation, as
in the official toolkits; and the one line that says why ImageNet weights leave a detector's
7x7 stem kernel generation at its initialisation (converter report and load)."""
import contextlib
import glob
import io
import logging
import os

import pytest
import torch

from helpers import CONFIG_ROOT, build_yacs_model, load_recording, requires_detectron2, yacs_config
from official_fixtures import load_fixture, official_checkpoint

pytestmark = requires_detectron2

STEM_KEYS = ("stem.1.conv2.conv.weight", "stem.1.conv2.conv.bias")


def config_names(ext):
    """Every config of the model zoo (not the bases and shared pieces)."""
    return sorted(os.path.relpath(p, CONFIG_ROOT) for p in glob.glob(
        os.path.join(CONFIG_ROOT, "*", "*" + ext))
        if not os.path.basename(p).startswith("Base-") and "common" not in p)


def expected_kernel(name):
    return 3 if name.startswith("ImageNet-Classification") else 7


def lazy_rednet(model):
    """The RedNet node of a LazyConfig model, wherever the meta-architecture keeps it."""
    backbone = model.backbone
    return backbone.bottom_up if "bottom_up" in backbone else backbone


@pytest.mark.parametrize("name", config_names(".yaml"))
def test_every_yacs_config_has_the_official_stem_kernel(name):
    cfg = yacs_config(name[:-len(".yaml")])
    assert cfg.MODEL.REDNET.STEM_INVOLUTION_KERNEL == expected_kernel(name)


@pytest.mark.parametrize("name", config_names(".py"))
def test_every_lazy_config_has_the_official_stem_kernel(name):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(CONFIG_ROOT, name))
    assert lazy_rednet(cfg.model).stem_involution_kernel == expected_kernel(name)


def test_built_stems_have_the_official_shapes():
    from detectron2.config import LazyConfig, instantiate

    classifier = instantiate(LazyConfig.load(
        os.path.join(CONFIG_ROOT, "ImageNet-Classification/rednet26.py")).model)
    detector = build_yacs_model(yacs_config("Demo/mask_rcnn_rednet26_invfpn_invhead_shapes"))
    # The official checkpoints: (18, 8, 1, 1) in mmcls, (98, 8, 1, 1) in mmdet / mmseg.
    assert classifier.state_dict()["backbone.stem.1.conv2.conv.weight"].shape == (18, 8, 1, 1)
    assert detector.state_dict()[
        "backbone.bottom_up.stem.1.conv2.conv.weight"].shape == (98, 8, 1, 1)


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory):
    """The official RedNet-26 ImageNet checkpoint (the official code's keys and shapes, seeded
    values) converted by the CLI: the folder (official.pth, d2.pth) and what the CLI printed."""
    from involution_d2.checkpoint import cli

    official = official_checkpoint(load_fixture("rednet26"))
    assert official["backbone.stem.1.conv2.conv.weight"].shape == (18, 8, 1, 1)
    folder = tmp_path_factory.mktemp("weights")
    torch.save({"state_dict": official, "meta": {}}, folder / "official.pth")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main([str(folder / "official.pth"), str(folder / "d2.pth")]) == 0
    return folder, printed.getvalue()


def test_converter_reports_the_stem_for_detection_configs(imagenet_weights):
    out = imagenet_weights[1]
    assert "RedNet-26 classification" in out
    note = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(note) == 1
    assert "3x3" in note[0] and "7x7" in note[0]
    assert "stem.1.conv2.conv.weight, stem.1.conv2.conv.bias" in note[0]


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def load_with_log(model, path):
    """Load through the project's checkpointer; its incompatible keys and every log line of
    the checkpointer and of Detectron2's name matching."""
    from involution_d2.checkpoint import AtomicCheckpointer

    handler = Lines()
    loggers = [logging.getLogger(AtomicCheckpointer.__module__),
               logging.getLogger("fvcore"), logging.getLogger("detectron2")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        checkpointer = load_recording(model, path)
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
    return checkpointer.incompatible, handler.lines


def test_loading_imagenet_weights_into_a_detector_explains_the_stem_once(imagenet_weights):
    path = imagenet_weights[0] / "d2.pth"
    detector = build_yacs_model(yacs_config(
        "COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x",
        overrides={"MODEL.REDNET.DEPTH": 26}))
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    incompatible, lines = load_with_log(detector, path)

    stem = [f"backbone.bottom_up.{k}" for k in STEM_KEYS]
    mentions = [line for line in lines if "stem.1.conv2.conv" in line]
    assert len(mentions) == 1, lines
    assert all(k in mentions[0] for k in stem) and "3x3" in mentions[0] and "7x7" in mentions[0]
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert incompatible.incorrect_shapes == []
    state = detector.state_dict()
    for key in stem:
        assert torch.equal(state[key], before[key])
    # Everything else of the RedNet came from the checkpoint.
    checkpoint = torch.load(path, weights_only=True)["model"]
    assert torch.equal(state["backbone.bottom_up.stem.1.conv1.conv.weight"],
                       checkpoint["stem.1.conv1.conv.weight"])
    assert torch.equal(state["backbone.bottom_up.res5.0.conv2.conv2.conv.weight"],
                       checkpoint["res5.0.conv2.conv2.conv.weight"])


def test_loading_imagenet_weights_into_the_classifier_loads_the_stem(imagenet_weights):
    path = imagenet_weights[0] / "d2.pth"
    classifier = build_yacs_model(yacs_config("ImageNet-Classification/rednet26"))
    incompatible, lines = load_with_log(classifier, path)
    assert not [line for line in lines if "not loaded" in line]
    assert incompatible.missing_keys == [] and incompatible.incorrect_shapes == []
    checkpoint = torch.load(path, weights_only=True)["model"]
    for key in STEM_KEYS:
        assert torch.equal(classifier.state_dict()["backbone." + key], checkpoint[key])
