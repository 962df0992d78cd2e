"""FLOP and parameter analysis: the involution FLOP handle, OpenMMLab's counting rules,
OpenMMLab's dummy forward (1000 proposals, 100 mask ROIs), the official figures for a
classifier and a detector, and tools/analyze_model.py."""
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers import REPO, CONFIG_ROOT, build_yacs_model, requires_detectron2, yacs_config
from involution_d2.analysis import OFFICIAL_MODEL_ZOO, count_flops
from involution_d2.layers import Involution



def test_openmmlab_rules_on_standard_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 1, bias=False), nn.GroupNorm(2, 4, affine=False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5),
    ).eval()
    report = count_flops(model, (torch.randn(2, 3, 10, 12),), "openmmlab")
    out1 = 2 * 8 * 10 * 12
    out2 = 2 * 4 * 5 * 6
    expected = (
        out1 * 3 * 9 + out1   # conv multiply-adds + one add per output for the bias
        + 2 * out1            # affine BatchNorm: two per element
        + out1                # ReLU
        + out1                # max-pool: one per input element
        + out2 * 8            # bias-free 1x1 conv
        + out2                # GroupNorm without affine
        + out2                # adaptive average pool
        + 2 * 4 * 5           # linear: multiply-adds, bias not counted
    )
    assert report.total == expected
    assert report.aggregation == 0


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_involution_layer_counts_exactly(backend):
    """Every part of a stride-2 involution layer on an odd input, aggregation included,
    whatever backend the layer was built with (the trace always sees the "torch" one)."""
    torch.manual_seed(0)
    layer = Involution(32, 7, stride=2, norm="BN", backend=backend).eval()
    n, h, w = 2, 15, 17
    ho, wo = 8, 9  # ceil(15 / 2), ceil(17 / 2)
    report = count_flops(layer, (torch.randn(n, 32, h, w),), "openmmlab")
    assert layer.backend == backend  # restored after the trace
    pos = n * ho * wo
    groups = 2
    conv1_bias = layer.conv1.conv.bias is not None
    expected_aggregation = n * 32 * ho * wo * 49
    expected = (
        n * 32 * h * w                             # average pool (ceil mode)
        + pos * 8 * 32 + (pos * 8 if conv1_bias else 0)
        + 2 * pos * 8 + pos * 8                    # BatchNorm (affine), ReLU
        + pos * 49 * groups * 8 + pos * 49 * groups  # kernel generation, with bias
        + expected_aggregation
    )
    assert report.aggregation == expected_aggregation
    assert report.total == expected
    assert report.without_aggregation == expected - expected_aggregation


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="unknown FLOP convention 'mmcv'.*openmmlab"):
        count_flops(nn.Identity(), (torch.zeros(1),), "mmcv")


def test_official_rows_name_existing_configs():
    assert len(OFFICIAL_MODEL_ZOO) == 16
    for row in OFFICIAL_MODEL_ZOO:
        assert os.path.isfile(os.path.join(CONFIG_ROOT, row.config)), row.config
        assert os.path.isfile(os.path.join(CONFIG_ROOT, row.config[:-5] + ".py")), row.config


@requires_detectron2
def test_rednet26_classifier_reproduces_the_official_figures():
    from involution_d2.analysis import count_parameters, model_flops

    model = build_yacs_model(yacs_config("ImageNet-Classification/rednet26"))
    report, size = model_flops(model, "openmmlab")
    assert size == (224, 224)
    # Official model zoo: 9.23 M, 1.73 G.  Ours (3x3 stem involution, as the official
    # classifier): 1.710 G with the aggregation (-1.1 %), 2.0 % of it the aggregation.
    assert count_parameters(model).openmmlab == 9_233_166
    assert report.total / 1e9 == pytest.approx(1.7104, abs=1e-4)
    assert report.total / 1e9 == pytest.approx(1.73, rel=0.015)
    assert report.without_aggregation / 1e9 == pytest.approx(1.73, rel=0.05)
    assert 0.015 < report.aggregation / report.total < 0.03


@requires_detectron2
def test_dummy_forward_runs_1000_boxes_and_100_mask_rois():
    """OpenMMLab's forward_dummy: the box head on 1000 proposals, the mask head on 100,
    whatever the image; checked layer by layer against OpenMMLab's rules."""
    from involution_d2.analysis import model_flops

    model = build_yacs_model(yacs_config("COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x"))
    report, _ = model_flops(model, "openmmlab", input_size=(128, 160))
    by_module = report.analysis.by_module()
    fc = 256 * 7 * 7 * 1024 + 1024 + 1024 * 1024 + 1024  # two FC + ReLU, bias not counted
    assert by_module["model.roi_heads.box_head"] == 1000 * fc
    assert by_module["model.roi_heads.box_predictor"] == 1000 * 1024 * (81 + 80 * 4)
    s, s2 = 14 * 14, 28 * 28
    conv = s * 256 * 256 * 9 + s * 256 + s * 256      # 3x3 conv + bias + ReLU
    upsample = s * 256 * 256 * 4 + s2 * 256 + s2 * 256  # 2x2 deconv + bias + ReLU
    logits = s2 * 256 * 80 + s2 * 80
    assert by_module["model.roi_heads.mask_head"] == 100 * (4 * conv + upsample + logits)


@requires_detectron2
def test_openmmlab_parameter_count_adds_trained_frozen_bn():
    """Official 31.6 M: OpenMMLab keeps the affine BatchNorm parameters of res3..res5 trainable
    (norm_eval only freezes statistics); Detectron2's FrozenBN makes them buffers."""
    from involution_d2.analysis import count_parameters

    model = build_yacs_model(yacs_config("COCO-Detection/faster_rcnn_rednet50_fpn_1x"))
    counts = count_parameters(model)
    assert counts.trainable == 31_546_496
    assert counts.openmmlab - counts.trainable == 51_968
    assert round(counts.openmmlab / 1e6, 1) == 31.6
    assert counts.all > counts.openmmlab  # res2 and the stem stay frozen


@requires_detectron2
def test_detectron2_convention_counts_real_inference():
    from involution_d2.analysis import model_flops

    model = build_yacs_model(yacs_config("Demo/semantic_fpn_rednet26_invfpn_shapes"))
    report, size = model_flops(model, "detectron2", input_size=(64, 96))
    assert size == (64, 96)
    # The involution FPN's 7x7 aggregation at 1/4 .. 1/32, 256 channels, plus the backbone's.
    fpn = sum(256 * 49 * (64 // s) * (96 // s) for s in (4, 8, 16, 32))
    assert report.aggregation > fpn
    assert report.total > report.aggregation > 0
    assert model.training is True  # left as found


@requires_detectron2
def test_analyze_model_tool():
    cmd = [sys.executable, os.path.join(REPO, "tools", "analyze_model.py"), "--config-file",
           os.path.join(CONFIG_ROOT, "ImageNet-Classification", "rednet26.py"), "--max-depth", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert re.search(r"as OpenMMLab counts them\s+9,233,166", out.stdout)
    assert re.search(r"with the involution aggregation\s+1\.71 G", out.stdout)
    assert re.search(r"without the aggregation\s+1\.68 G", out.stdout)

    bad = subprocess.run(cmd + ["--input-size", "16", "16"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "--input-size 16 16" in bad.stderr and "at least 32" in bad.stderr
