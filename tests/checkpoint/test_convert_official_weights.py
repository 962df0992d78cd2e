"""The official-checkpoint converter beyond what the fidelity tests compare
(tests/modeling/test_official_fidelity.py): an official RedNet ImageNet checkpoint initialises the
RedNet of every detection and segmentation config; the class convention holds; bad files
fail clearly; the CLI reports and writes atomically.  The official checkpoints are the
seeded ones of tests/data/official_fidelity, whose keys come from the official code."""
import glob
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, CONFIG_ROOT, build_yacs_model, load_recording, requires_detectron2,
                     yacs_config)
from official_fixtures import load_fixture, official_checkpoint

pytestmark = requires_detectron2



# ---------------------------------------------------------------- helpers
def official_state(row):
    """The seeded official checkpoint of a model zoo row (official key names)."""
    return official_checkpoint(load_fixture(row))


def convert_to_file(official, path, **kwargs):
    from involution_d2.checkpoint import convert, to_detectron2_checkpoint
    from involution_d2.utils.file_io import save_atomically

    converted, family, unmatched = convert(official, **kwargs)
    assert unmatched == []
    save_atomically(to_detectron2_checkpoint(converted, family), str(path))
    return family




@pytest.fixture(scope="module")
def rednet26_file(tmp_path_factory):
    official = official_state("rednet26")
    path = tmp_path_factory.mktemp("ckpt") / "rednet26_d2.pth"
    assert convert_to_file(official, path, expect="classification") == "classification"
    return official, path


# ---------------------------------------------------------------- ImageNet initialisation
def yacs_names(*folders):
    return sorted(os.path.relpath(p, CONFIG_ROOT)[:-5] for folder in folders
                  for p in glob.glob(os.path.join(CONFIG_ROOT, folder, "*.yaml")))


@pytest.mark.parametrize("name", yacs_names("COCO-Detection", "COCO-InstanceSegmentation",
                                            "Cityscapes-SemanticSegmentation"))
def test_imagenet_weights_initialise_every_rednet_config(name, rednet26_file):
    official, path = rednet26_file
    model = build_yacs_model(yacs_config(name, overrides={"MODEL.REDNET.DEPTH": 26}))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    incompatible = load_recording(model, path).incompatible
    prefix = "backbone.bottom_up." if hasattr(model.backbone, "bottom_up") else "backbone."
    rednet = [k for k in model.state_dict() if k.startswith((prefix + "stem.", prefix + "res"))]
    # The 7x7 stem involution's kernel generation is explained in one line, not listed.
    assert rednet and not [k for k in incompatible.missing_keys if k in rednet]
    # Only the ImageNet classifier, which detection and segmentation models do not have.
    assert sorted(incompatible.unexpected_keys) == ["linear.bias", "linear.weight"]
    assert incompatible.incorrect_shapes == []
    state = model.state_dict()
    for key, value in official.items():
        match = re.fullmatch(r"backbone\.(stem|layer(\d))\.(.+)", key)
        if match and not key.endswith("num_batches_tracked"):
            stage = "stem" if match[1] == "stem" else f"res{int(match[2]) + 1}"
            ours = f"{prefix}{stage}.{match[3]}"
            if match[3].startswith("1.conv2.conv."):  # 3x3 in the classifier, 7x7 here
                assert torch.equal(state[ours], initial[ours]), ours
            else:
                assert torch.equal(state[ours], value), key


# ---------------------------------------------------------------- conventions
def test_rcnn_classes_have_background_last_in_both():
    """mmdet 2.x fc_cls: num_classes + 1 scores, background at index num_classes; Detectron2's
    cls_score: the same. Class ids are COCO's category order in both."""
    model = build_yacs_model(yacs_config("COCO-Detection/faster_rcnn_rednet50_fpn_1x"))
    predictor = model.roi_heads.box_predictor
    assert predictor.num_classes == 80 and predictor.cls_score.out_features == 81
    assert predictor.bbox_pred.out_features == 80 * 4  # class-specific, class-major


# ---------------------------------------------------------------- failures and the CLI
def test_corrupt_files_and_other_architectures_fail_clearly(tmp_path):
    from involution_d2.checkpoint import CheckpointFormatError, convert, load_official_state_dict

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="not readable as a PyTorch checkpoint"):
        load_official_state_dict(str(bad))
    torch.save({"meta": {}, "optimizer": {}}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointFormatError, match="expected an OpenMMLab checkpoint"):
        load_official_state_dict(str(tmp_path / "nostate.pth"))

    torchvision_like = {k: torch.zeros(1) for k in (
        "conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight", "fc.bias")}
    with pytest.raises(CheckpointFormatError, match="torchvision-style ResNet.*expected"):
        convert(torchvision_like)

    detection = official_state("retinanet_red50_fpn_1x_coco")
    with pytest.raises(CheckpointFormatError,
                       match="expected a classification checkpoint, found a detection one"):
        convert(detection, expect="classification")

    truncated = {k: v for k, v in official_state("rednet26").items() if "layer3.3." not in k}
    with pytest.raises(CheckpointFormatError, match=r"\[1, 2, 3, 1\] blocks per stage"):
        convert(truncated)


def test_cli_converts_reports_unmatched_keys_and_writes_atomically(tmp_path, monkeypatch):
    from involution_d2.checkpoint import cli

    rednet26 = official_state("rednet26")
    src, dst = tmp_path / "official.pth", tmp_path / "out" / "d2.pth"
    torch.save({"state_dict": rednet26, "meta": {"epoch": 130}}, src)
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools/convert_official_weights.py"),
                          str(src), str(dst)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "RedNet-26 classification" in run.stdout
    saved = torch.load(dst, weights_only=True)
    assert saved["matching_heuristics"] and "res5.0.conv2.conv1.conv.weight" in saved["model"]
    assert os.listdir(dst.parent) == ["d2.pth"]  # no temporary file left

    # An unknown key: reported, nothing written unless allowed.
    torch.save({"state_dict": {**rednet26, "backbone.extra.weight": torch.zeros(2)}}, src)
    other = tmp_path / "other.pth"
    assert cli.main([str(src), str(other)]) == 1 and not other.exists()
    assert cli.main([str(src), str(other), "--allow-unmatched"]) == 0 and other.exists()
    assert cli.main([str(src), str(other), "--expect", "segmentation"]) == 2

    # A failed write leaves the previous file whole and no temporary file.
    before = dst.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cli.main([str(tmp_path / "official.pth"), str(dst), "--allow-unmatched"])
    assert dst.read_bytes() == before and os.listdir(dst.parent) == ["d2.pth"]
