"""Converted official checkpoints compute what the official code computes.

tests/data/official_fidelity/ holds, for every row of the official model zoo, what the
official d-li14/involution models computed under OpenMMLab (tests/data/make_official_fixtures.py)
with a checkpoint seeded from its key names (tests/seeded.py), sampled
at every stage.  Each test rebuilds that checkpoint and input here (no OpenMMLab needed),
converts it (the CLI for one row, the same function for the others), loads it into the
project's config, yacs and LazyConfig, through Detectron2's checkpointer, checks that every
tensor of the model came from the checkpoint, runs the input, and compares each recorded
stage: max |ours - official| / max |official| <= 1e-4.

    python tests/modeling/test_official_fidelity.py [--stages]  # docs/FIDELITY.md's table
"""
import math
import os
import subprocess
import sys

import pytest
import torch

if __name__ == "__main__":  # run as a script: the shared test modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import REPO, CONFIG_ROOT, load_recording, requires_detectron2, yacs_config
from official_fixtures import (
    FIXTURES,
    ROWS,
    load_fixture,
    official_checkpoint,
    official_image,
)

pytestmark = requires_detectron2

TOLERANCE = 1e-4  # max-abs error relative to the official output's max-abs
# Converted by the command-line tool in a subprocess (the others by the same function).
CLI_ROW = "mask_rcnn_red50_neck_fpn_head_1x_coco"
# Each row's project config in both formats: yacs and LazyConfig.
CASES = [(row, ext) for row in ROWS for ext in (".yaml", ".py")]


def convert_checkpoint(official, row, tmp_path):
    """The converted checkpoint file, and its state dict."""
    from involution_d2.checkpoint import convert, to_detectron2_checkpoint
    from involution_d2.utils.file_io import save_atomically

    dst = tmp_path / "converted.pth"
    if row == CLI_ROW:
        src = tmp_path / "official.pth"
        torch.save({"state_dict": official, "meta": {}}, src)
        run = subprocess.run(
            [sys.executable, os.path.join(REPO, "tools", "convert_official_weights.py"),
             str(src), str(dst)], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": REPO})
        assert run.returncode == 0, run.stdout + run.stderr
    else:
        converted, family, unmatched = convert(official)
        assert unmatched == []
        save_atomically(to_detectron2_checkpoint(converted, family), str(dst))
    return dst, torch.load(dst, weights_only=True)


def build_project_model(name, ext):
    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    if ext == ".py":
        model = instantiate(LazyConfig.load(os.path.join(CONFIG_ROOT, name + ".py")).model)
    else:
        model = build_model(yacs_config(name))
    return model.eval()


def load_every_tensor(model, path, checkpoint):
    """Load through the project's checkpointer; fail unless every parameter and buffer of
    the model now holds a tensor of the checkpoint, and every tensor of it was used."""
    incompatible = load_recording(model, path).incompatible
    assert incompatible.incorrect_shapes == [], incompatible.incorrect_shapes
    assert incompatible.unexpected_keys == [], incompatible.unexpected_keys

    converted = checkpoint["model"]
    used = set()
    for key, value in model.state_dict().items():
        if key in ("pixel_mean", "pixel_std") or key.endswith("num_batches_tracked"):
            continue  # constants of the config; BN counters, which the official ones drop
        # Full keys match exactly; classification keys are unprefixed (suffix heuristics).
        sources = [k for k in converted if k == key or key.endswith("." + k)]
        assert len(sources) == 1, f"{key}: loaded from {sources or 'nothing'}"
        assert torch.equal(value, converted[sources[0]]), f"{key} differs from {sources[0]}"
        used.add(sources[0])
    assert used == set(converted), sorted(set(converted) - used)


# ------------------------------------------------------------------ the project's stages
def _hook_backbone(rednet, out):
    """Record RedNet's stem (after its max-pool) and res2-res5 into ``out``."""
    return [getattr(rednet, name).register_forward_hook(
        lambda m, i, o, name=name: out.__setitem__(name, o))
        for name in ("stem", "res2", "res3", "res4", "res5")]


def _per_anchor(deltas):
    """(1, A * 4, H, W) head deltas -> (H * W * A, 4), as Detectron2 pairs them with its
    anchors (location-major)."""
    _, a4, h, w = deltas.shape
    return deltas[0].view(a4 // 4, 4, h, w).permute(2, 3, 0, 1).reshape(-1, 4)


def run_project(model, image, fixture):
    """Stage name -> our output, named as the fixture names the official ones."""
    from detectron2.structures import Boxes

    from involution_d2.checkpoint import mmdet_to_detectron2_anchor_order
    from involution_d2.checkpoint.official import RETINANET_RATIOS, RETINANET_SCALES

    out = {}
    inputs = [{"image": image}]
    meta = type(model).__name__
    if meta == "ImageNetClassifier":
        hooks = _hook_backbone(model.backbone, out)
        out["logits"] = model(inputs)[0]["pred_logits"][None]
        for hook in hooks:
            hook.remove()
        return out

    images = ((image - model.pixel_mean) / model.pixel_std)[None]
    backbone = model.backbone
    rednet = getattr(backbone, "bottom_up", backbone)
    hooks = _hook_backbone(rednet, out)
    features = backbone(images)
    for hook in hooks:
        hook.remove()
    out.update({k: v for k, v in features.items() if k.startswith("p")})

    if meta == "EncoderDecoderSegmentor":
        head = model.sem_seg_head
        if hasattr(head, "conv_seg"):  # UPerNet: layers, dropout (eval: none), classifier
            out["sem_seg.logits"] = head.conv_seg(head.layers(features))
        else:
            out["sem_seg.logits"] = head.layers(features)
        if model.aux_head is not None:
            out["aux.logits"] = model.aux_head.conv_seg(model.aux_head.layers(features))
    elif meta == "RetinaNet":
        # Ours are size-major, the recorded mmdet outputs ratio-major.  The inverse of
        # mmdet_to_detectron2_anchor_order is itself with scales and ratios swapped.
        def mmdet_order(t):  # dim 0: anchor blocks
            return mmdet_to_detectron2_anchor_order(
                t, num_scales=RETINANET_RATIOS, num_ratios=RETINANET_SCALES)

        level_features = [features[f] for f in model.head_in_features]
        logits, deltas = model.head(level_features)
        anchors = model.anchor_generator(level_features)
        for f, c, d, a in zip(model.head_in_features, logits, deltas, anchors):
            out[f"retina.logits.{f}"] = mmdet_order(c[0])[None]
            out[f"retina.deltas.{f}"] = mmdet_order(d[0])[None]
            boxes = model.box2box_transform.apply_deltas(_per_anchor(d), a.tensor)
            for name, t in (("anchors", a.tensor), ("boxes", boxes)):
                a_first = t.view(-1, d.shape[1] // 4, 4).transpose(0, 1)  # (A, H * W, 4)
                out[f"retina.{name}.{f}"] = mmdet_order(a_first).transpose(0, 1).reshape(-1, 4)
    else:  # GeneralizedRCNN
        rpn = model.proposal_generator
        level_features = [features[f] for f in rpn.in_features]
        objectness, deltas = rpn.rpn_head(level_features)
        anchors = rpn.anchor_generator(level_features)
        for f, o, d, a in zip(rpn.in_features, objectness, deltas, anchors):
            out[f"rpn.objectness.{f}"], out[f"rpn.deltas.{f}"] = o, d
            out[f"rpn.anchors.{f}"] = a.tensor
            out[f"rpn.boxes.{f}"] = rpn.box2box_transform.apply_deltas(_per_anchor(d), a.tensor)
        roi = model.roi_heads
        boxes = [Boxes(fixture["roi_boxes"])]
        box_features = roi.box_pooler([features[f] for f in roi.box_in_features], boxes)
        scores, box_deltas = roi.box_predictor(roi.box_head(box_features))
        out.update({"roi.box_features": box_features, "roi.cls_score": scores,
                    "roi.bbox_pred": box_deltas,
                    "roi.boxes": roi.box_predictor.box2box_transform.apply_deltas(
                        box_deltas, boxes[0].tensor)})
        if roi.mask_on:
            mask_features = roi.mask_pooler([features[f] for f in roi.mask_in_features], boxes)
            out.update({"roi.mask_features": mask_features,
                        "roi.mask_logits": roi.mask_head.layers(mask_features)})
    return out


def stage_errors(fixture, outputs):
    """Stage -> max |ours - official| / max |official| over the recorded values (the
    sampled values, the per-channel means and the max-abs itself, each relative to the
    official output's max-abs)."""
    import seeded

    missing = sorted(set(fixture["stages"]) - set(outputs))
    assert not missing, f"no project output for the official stages {missing}"
    errors = {}
    for stage, record in fixture["stages"].items():
        ours = outputs[stage].detach().float()
        assert list(ours.shape) == record["shape"], (stage, list(ours.shape), record["shape"])
        if not torch.isfinite(ours).all():
            errors[stage] = math.inf  # NaN would compare as "not above the tolerance"
            continue
        flat = ours.reshape(-1)
        index = seeded.sample_indices(f"{fixture['row']}/{stage}", flat.numel(),
                                      record["sample"].numel())
        scale = record["max_abs"]
        error = max((flat[index] - record["sample"]).abs().max().item(),
                    abs(flat.abs().max().item() - scale))
        if "channel_mean" in record:
            error = max(error, (ours.mean((0, 2, 3)) - record["channel_mean"]).abs().max().item())
        errors[stage] = error / scale
    return errors


_converted = {}  # the last row's (fixture, file, checkpoint): both formats convert once


def converted(row, folder):
    if row not in _converted:
        _converted.clear()
        fixture = load_fixture(row)
        path, checkpoint = convert_checkpoint(official_checkpoint(fixture), row, folder)
        _converted[row] = fixture, path, checkpoint
    return _converted[row]


def fidelity(row, ext, folder):
    """Stage -> relative error of the project's ``ext`` config of ``row``."""
    fixture, path, checkpoint = converted(row, folder)
    model = build_project_model(fixture["project_config"], ext)
    load_every_tensor(model, path, checkpoint)
    with torch.no_grad():
        outputs = run_project(model, official_image(fixture), fixture)
    return fixture, stage_errors(fixture, outputs)


# ------------------------------------------------------------------ tests
def test_the_fixtures_cover_every_row_of_the_model_zoo():
    found = sorted(f[:-4] for f in os.listdir(FIXTURES) if f.endswith(".pth"))
    assert found == sorted(ROWS)
    for row in ROWS:
        fixture = load_fixture(row)
        assert fixture["row"] == row
        assert os.path.exists(os.path.join(CONFIG_ROOT, fixture["project_config"] + ".yaml"))
        assert os.path.exists(os.path.join(CONFIG_ROOT, fixture["project_config"] + ".py"))


@pytest.mark.parametrize("row,ext", CASES, ids=[f"{row}{ext}" for row, ext in CASES])
def test_converted_checkpoint_reproduces_the_official_stages(row, ext, tmp_path_factory):
    fixture, errors = fidelity(row, ext, tmp_path_factory.mktemp(row))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (
        f"{row} ({fixture['project_config']}{ext}): {worst} differs from the official output "
        f"by {errors[worst]:.2e} of its max-abs; all stages: "
        + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))


# Columns of docs/FIDELITY.md's table: stage name prefix -> column.
GROUPS = {"stem": "backbone", "res": "backbone", "p": "neck", "rpn.anchors": "anchors, boxes",
          "rpn.boxes": "anchors, boxes", "retina.anchors": "anchors, boxes",
          "retina.boxes": "anchors, boxes", "rpn": "RPN / RetinaNet head",
          "retina": "RPN / RetinaNet head", "roi.mask": "RoI mask head", "roi": "RoI box head",
          "logits": "logits", "sem_seg": "logits", "aux": "auxiliary head"}


def print_table(per_stage=False):
    """The max relative error of each row, over both config formats: per stage, or per
    group of stages (docs/FIDELITY.md's table)."""
    import pathlib
    import tempfile

    columns = ["backbone", "neck", "RPN / RetinaNet head", "anchors, boxes", "RoI box head",
               "RoI mask head", "logits", "auxiliary head"]
    if per_stage:
        print("| Row | Stage | Max relative error |\n| --- | --- | --- |")
    else:
        print("| Row | " + " | ".join(columns) + " |")
        print("| --- " * (len(columns) + 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for row in ROWS:
            errors = {}
            for ext in (".yaml", ".py"):
                for stage, error in fidelity(row, ext, pathlib.Path(tmp))[1].items():
                    errors[stage] = max(error, errors.get(stage, 0.0))
            if per_stage:
                for stage, error in errors.items():
                    print(f"| {row} | {stage} | {error:.1e} |")
                continue
            worst = {}
            for stage, error in errors.items():
                group = GROUPS[next(p for p in GROUPS if stage.startswith(p))]
                worst[group] = max(error, worst.get(group, 0.0))
            print(f"| {row} | " + " | ".join(
                f"{worst[c]:.1e}" if c in worst else "-" for c in columns) + " |")


if __name__ == "__main__":
    print_table(per_stage="--stages" in sys.argv)
