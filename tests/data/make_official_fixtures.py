"""Record what the official RedNet models compute, for tests/modeling/test_official_fidelity.py.

Runs the official d-li14/involution code (fetched by you; never committed here) inside the
OpenMMLab versions it was written for, on checkpoints whose every tensor is seeded from its
key's name (tests/seeded.py), and saves sub-sampled stage outputs, one
file per model zoo row, with what the tests need to rebuild the same checkpoint and input.

OpenMMLab lives in its own virtualenv, never in the Python that runs the tests:

    python3 -m venv --system-site-packages venv-mm     # torch and numpy from the system
    venv-mm/bin/pip install "setuptools<81" wheel
    MMCV_WITH_OPS=0 venv-mm/bin/pip install --no-build-isolation mmcv==1.7.2
    venv-mm/bin/pip install --no-deps mmcls==0.25.0 mmdet==2.28.2 mmsegmentation==0.30.0
    venv-mm/bin/pip install addict yapf terminaltables prettytable
    git clone https://github.com/d-li14/involution /path/to/involution
    venv-mm/bin/python tests/data/make_official_fixtures.py --official-repo /path/to/involution \
        tests/data/official_fidelity

What the official code needs that a CPU and these versions do not give it (each is here,
nothing is patched in site-packages or in the official checkout):

- mmcv "lite" has no compiled ops; the models call two: RoIAlign (R-CNN RoI extractors)
  and nms (imported by the RPN head, unused for the stages recorded).  A stand-in
  ``mmcv._ext`` computes them with torchvision (mmcv's own Python wrappers stay in use);
  any other compiled op raises NotImplementedError naming itself.  (Checked once: mmcv
  1.7.2's own CPU roi_align kernel, compiled alone from its source, gives the same values
  as torchvision, bit for bit, on ROI_BOXES at the four FPN strides, output 7 and 14.)
- The official model files are "copied into" the toolkits as their README says, by loading
  each file as the toolkit module it would be (e.g. ``mmdet.models.backbones.rednet``).
  ``utils/involution_cuda.py`` needs CuPy and a GPU and raises NotImplementedError on CPU:
  the official ``utils/involution_naive.py`` stands in for it (same parameters, same
  arithmetic, unfold instead of a CUDA kernel).
- The official RPN head imports ``rpn_test_mixin``, removed from mmdet in 2.x; its test
  methods moved to mmdet's dense heads, so an empty ``RPNTestMixin`` stands in.
- The configs name a pretrained file (``/path/to/rednet50.pth``) that mmdet 2.28 / mmseg
  0.30 would pass to the backbone: ``pretrained`` is set to None (weights are seeded).
- ``mask_rcnn_red50_neck_fpn_head_1x_coco.py`` ends in ``grad_clip(...)``, a NameError (a
  training setting): a temporary copy of the configs gets ``grad_clip=...``.
- The official configs inherit dataset/schedule/runtime files from each toolkit; they are
  taken from the installed toolkit's own copy (``<pkg>/.mim/configs/_base_``).
"""
import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types
import warnings

import torch

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SAMPLES = 1024  # values kept per stage output


def _load_seeded():
    # By path: the package's __init__ imports Detectron2, which this tool does not need.
    path = os.path.join(REPO, "tests", "seeded.py")
    spec = importlib.util.spec_from_file_location("involution_d2_seeded", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seeded = _load_seeded()

# ------------------------------------------------------------------ the rows
# name: (toolkit, official config under <toolkit>/configs, project config, input (N, C, H, W)).
CLS_INPUT, DET_INPUT, SEG_INPUT = (1, 3, 64, 64), (1, 3, 128, 160), (1, 3, 128, 256)
ROWS = {
    **{f"rednet{d}": ("cls", f"rednet/rednet{d}_b32x64_warmup_coslr_imagenet.py",
                      f"ImageNet-Classification/rednet{d}", CLS_INPUT)
       for d in (26, 38, 50, 101, 152)},
    "faster_rcnn_red50_fpn_1x_coco": (
        "det", "involution/faster_rcnn_red50_fpn_1x_coco.py",
        "COCO-Detection/faster_rcnn_rednet50_fpn_1x", DET_INPUT),
    "faster_rcnn_red50_neck_fpn_1x_coco": (
        "det", "involution/faster_rcnn_red50_neck_fpn_1x_coco.py",
        "COCO-Detection/faster_rcnn_rednet50_invfpn_1x", DET_INPUT),
    "faster_rcnn_red50_neck_fpn_head_1x_coco": (
        "det", "involution/faster_rcnn_red50_neck_fpn_head_1x_coco.py",
        "COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x", DET_INPUT),
    "mask_rcnn_red50_fpn_1x_coco": (
        "det", "involution/mask_rcnn_red50_fpn_1x_coco.py",
        "COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x", DET_INPUT),
    "mask_rcnn_red50_neck_fpn_1x_coco": (
        "det", "involution/mask_rcnn_red50_neck_fpn_1x_coco.py",
        "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_1x", DET_INPUT),
    "mask_rcnn_red50_neck_fpn_head_1x_coco": (
        "det", "involution/mask_rcnn_red50_neck_fpn_head_1x_coco.py",
        "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x", DET_INPUT),
    "retinanet_red50_fpn_1x_coco": (
        "det", "involution/retinanet_red50_fpn_1x_coco.py",
        "COCO-Detection/retinanet_rednet50_fpn_1x", DET_INPUT),
    "retinanet_red50_neck_fpn_1x_coco": (
        "det", "involution/retinanet_red50_neck_fpn_1x_coco.py",
        "COCO-Detection/retinanet_rednet50_invfpn_1x", DET_INPUT),
    "fpn_red50_512x1024_80k_cityscapes": (
        "seg", "involution/fpn_red50_512x1024_80k_cityscapes.py",
        "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_fpn_80k", SEG_INPUT),
    "fpn_red50_neck_512x1024_80k_cityscapes": (
        "seg", "involution/fpn_red50_neck_512x1024_80k_cityscapes.py",
        "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_invfpn_80k", SEG_INPUT),
    "upernet_red50_512x1024_80k_cityscapes": (
        "seg", "involution/upernet_red50_512x1024_80k_cityscapes.py",
        "Cityscapes-SemanticSegmentation/upernet_rednet50_80k", SEG_INPUT),
}

# Fixed RoIs (x1, y1, x2, y2) in input pixels for the R-CNN heads: fractional corners, one or
# more per FPN level of mmdet's (and Detectron2's) level rule floor(log2(sqrt(area) / 56)),
# including boxes that leave the 128 x 160 image.
ROI_BOXES = [
    [10.0, 12.0, 40.0, 50.0],       # P2
    [20.3, 33.7, 75.9, 101.2],      # P2
    [8.0, 4.0, 150.0, 124.0],       # P3
    [-40.5, -30.0, 200.0, 170.25],  # P3
    [-100.0, -80.0, 260.0, 210.0],  # P4
    [-200.0, -180.0, 360.0, 330.0],  # P5
]

# The official toolkit packages and the official model files, loaded as the modules the
# official README's "cp" would make of them.  "involution_cuda" <- involution_naive (CPU).
OFFICIAL_MODULES = {
    "cls": ("mmcls", [
        ("models/utils/involution_cuda", "models/utils/involution_naive.py"),
        ("models/backbones/rednet", "models/backbones/rednet.py"),
    ]),
    "det": ("mmdet", [
        ("models/utils/involution_cuda", "models/utils/involution_naive.py"),
        ("models/backbones/base_backbone", "models/backbones/base_backbone.py"),
        ("models/backbones/rednet", "models/backbones/rednet.py"),
        ("models/necks/fpn_involution", "models/necks/fpn_involution.py"),
        ("models/dense_heads/rpn_test_mixin", None),
        ("models/dense_heads/rpn_head_involution", "models/dense_heads/rpn_head_involution.py"),
        ("models/roi_heads/mask_heads/fcn_mask_head_involution",
         "models/roi_heads/mask_heads/fcn_mask_head_involution.py"),
    ]),
    "seg": ("mmseg", [
        ("models/utils/involution_cuda", "models/utils/involution_naive.py"),
        ("models/backbones/base_backbone", "models/backbones/base_backbone.py"),
        ("models/backbones/rednet", "models/backbones/rednet.py"),
        ("models/necks/fpn_involution", "models/necks/fpn_involution.py"),
    ]),
}


# ------------------------------------------------------------------ stand-ins
class _TorchvisionExt(types.ModuleType):
    """``mmcv._ext`` with the two compiled ops the official models call, on torchvision."""

    @staticmethod
    def roi_align_forward(input, rois, output, argmax_y, argmax_x, *, aligned_height,
                          aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
        import torchvision

        if pool_mode != 1:
            raise NotImplementedError("the stand-in RoIAlign averages (pool_mode='avg') only")
        output.copy_(torchvision.ops.roi_align(
            input, rois, (aligned_height, aligned_width), spatial_scale, sampling_ratio,
            aligned))

    @staticmethod
    def nms(boxes, scores, iou_threshold, offset):
        import torchvision

        if offset != 0:
            raise NotImplementedError("the stand-in nms takes offset=0 only")
        return torchvision.ops.nms(boxes, scores, iou_threshold)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: no stand-in for this compiled op")
        return missing


def install_stand_ins(official_repo):
    sys.modules.setdefault("mmcv._ext", _TorchvisionExt("mmcv._ext"))
    warnings.filterwarnings("ignore")  # OpenMMLab's deprecation notices
    for toolkit, (package, files) in OFFICIAL_MODULES.items():
        importlib.import_module(f"{package}.models")  # the registries first
        for module_path, official_file in files:
            name = f"{package}.{module_path.replace('/', '.')}"
            if official_file is None:  # rpn_test_mixin
                module = types.ModuleType(name)
                module.RPNTestMixin = type("RPNTestMixin", (), {})
            else:
                path = os.path.join(official_repo, toolkit, package, official_file)
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            sys.modules[name] = module
            parent, _, leaf = name.rpartition(".")
            setattr(sys.modules[parent], leaf, module)


def official_config(official_repo, toolkit, config, workdir):
    """mmcv Config of an official config file, from a temporary tree: the toolkit's own
    _base_ files, the official configs over them, the NameError of one config patched."""
    import mmcv

    package = OFFICIAL_MODULES[toolkit][0]
    root = os.path.join(workdir, toolkit)
    if not os.path.isdir(root):
        mim = os.path.join(os.path.dirname(importlib.import_module(package).__file__),
                           ".mim", "configs", "_base_")
        shutil.copytree(mim, os.path.join(root, "_base_"))
        shutil.copytree(os.path.join(official_repo, toolkit, "configs"), root,
                        dirs_exist_ok=True)
        broken = os.path.join(root, "involution", "mask_rcnn_red50_neck_fpn_head_1x_coco.py")
        if os.path.exists(broken):
            with open(broken) as f:
                text = f.read()
            with open(broken, "w") as f:
                f.write(text.replace("dict(grad_clip(dict(", "dict(grad_clip=(dict("))
    cfg = mmcv.Config.fromfile(os.path.join(root, config))
    cfg.model.pretrained = None
    return cfg


def build_official(toolkit, cfg):
    if toolkit == "cls":
        from mmcls.models import build_classifier
        return build_classifier(cfg.model)
    if toolkit == "det":
        from mmdet.models import build_detector
        return build_detector(cfg.model)
    from mmseg.models import build_segmentor
    return build_segmentor(cfg.model)


# ------------------------------------------------------------------ what is recorded
def run_official(toolkit, model, x):
    """Stage name (Detectron2's: res2.., p2.., ...) -> the official model's output."""
    out = {}
    if toolkit == "cls":
        backbone = model.backbone
        hooks = [backbone.maxpool.register_forward_hook(
            lambda m, i, o: out.__setitem__("stem", o))]
        for k in range(1, 5):
            hooks.append(getattr(backbone, f"layer{k}").register_forward_hook(
                lambda m, i, o, k=k: out.__setitem__(f"res{k + 1}", o)))
        out["logits"] = model.head.fc(model.head.pre_logits(model.extract_feat(x)))
        for hook in hooks:
            hook.remove()
        return out

    feats = model.backbone(x)
    out.update({f"res{k + 2}": f for k, f in enumerate(feats)})
    if toolkit == "seg":
        if model.with_neck:
            feats = model.neck(feats)
            out.update({f"p{k + 2}": f for k, f in enumerate(feats)})
        out["sem_seg.logits"] = model.decode_head(feats)
        if model.with_auxiliary_head:
            out["aux.logits"] = model.auxiliary_head(feats)
        return out

    neck = model.neck(feats)
    if hasattr(model, "rpn_head"):  # Faster / Mask R-CNN: P2-P6
        out.update({f"p{k + 2}": f for k, f in enumerate(neck)})
        objectness, deltas = model.rpn_head(neck)
        for k, (o, d) in enumerate(zip(objectness, deltas)):
            out[f"rpn.objectness.p{k + 2}"], out[f"rpn.deltas.p{k + 2}"] = o, d
        out.update(anchors_and_boxes(model.rpn_head, "rpn", 2, deltas))
        from mmdet.core import bbox2roi

        rois = bbox2roi([torch.tensor(ROI_BOXES)])
        box = model.roi_head._bbox_forward(neck, rois)
        out.update({"roi.box_features": box["bbox_feats"], "roi.cls_score": box["cls_score"],
                    "roi.bbox_pred": box["bbox_pred"],
                    # Class-specific boxes (K x 4 per RoI) from the official box coder.
                    "roi.boxes": model.roi_head.bbox_head.bbox_coder.decode(
                        rois[:, 1:], box["bbox_pred"])})
        if model.roi_head.with_mask:
            mask = model.roi_head._mask_forward(neck, rois)
            out.update({"roi.mask_features": mask["mask_feats"],
                        "roi.mask_logits": mask["mask_pred"]})
    else:  # RetinaNet: P3-P7; channels in mmdet's anchor order (ratio-major)
        out.update({f"p{k + 3}": f for k, f in enumerate(neck)})
        logits, deltas = model.bbox_head(neck)
        for k, (c, d) in enumerate(zip(logits, deltas)):
            out[f"retina.logits.p{k + 3}"], out[f"retina.deltas.p{k + 3}"] = c, d
        out.update(anchors_and_boxes(model.bbox_head, "retina", 3, deltas))
    return out


def anchors_and_boxes(head, name, first_level, deltas):
    """The official anchors of each level ((H * W * A, 4), location-major) and the boxes its
    box coder decodes from them and the head's deltas (no clipping to the image)."""
    out = {}
    sizes = [tuple(d.shape[-2:]) for d in deltas]
    for k, (anchors, d) in enumerate(zip(head.anchor_generator.grid_priors(sizes, device="cpu"),
                                         deltas)):
        level = f"p{k + first_level}"
        out[f"{name}.anchors.{level}"] = anchors
        out[f"{name}.boxes.{level}"] = head.bbox_coder.decode(
            anchors, d[0].permute(1, 2, 0).reshape(-1, 4))
    return out


def summarize(row, stage, tensor, samples):
    """A small record of one output: shape, max |x|, per-channel means (dim 1 of a 4-D
    output) and the values at seeded positions."""
    tensor = tensor.detach().float()
    flat = tensor.reshape(-1)
    record = {
        "shape": list(tensor.shape),
        "max_abs": flat.abs().max().item(),
        "rms": flat.square().mean().sqrt().item(),
        "sample": flat[seeded.sample_indices(f"{row}/{stage}", flat.numel(), samples)].clone(),
    }
    if tensor.dim() == 4:
        record["channel_mean"] = tensor.mean((0, 2, 3)).clone()
    return record


def record_row(official_repo, row, workdir, samples):
    toolkit, config, project_config, input_shape = ROWS[row]
    cfg = official_config(official_repo, toolkit, config, workdir)
    model = build_official(toolkit, cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = seeded.seeded_state_dict(shapes)
    model.load_state_dict(state, strict=True)
    model.eval()
    x = seeded.seeded_input(row, input_shape)
    with torch.no_grad():
        outputs = run_official(toolkit, model, x)
    for stage, value in outputs.items():
        if not torch.isfinite(value).all():
            raise RuntimeError(f"{row}: {stage} is not finite; the seeding rule's scales are "
                               "too large for this model")
    return {
        "row": row,
        "toolkit": {"cls": "mmcls", "det": "mmdet", "seg": "mmseg"}[toolkit],
        "official_config": f"{toolkit}/configs/{config}",
        "project_config": project_config,
        "seeding_rule": seeded.RULE,
        "keys": list(shapes),
        "shapes": [list(s) for s in shapes.values()],
        "weights_fingerprint": seeded.fingerprint(state),
        "input_shape": list(input_shape),
        # The official data pipeline's normalisation: the recorded input is already
        # normalised, the project's models normalise pixels themselves.
        "img_norm_cfg": {"mean": [float(v) for v in cfg.img_norm_cfg["mean"]],
                         "std": [float(v) for v in cfg.img_norm_cfg["std"]],
                         "to_rgb": bool(cfg.img_norm_cfg["to_rgb"])},
        "input_fingerprint": seeded.fingerprint({"input": x}),
        "roi_boxes": torch.tensor(ROI_BOXES) if toolkit == "det" else None,
        "stages": {stage: summarize(row, stage, value, samples)
                   for stage, value in outputs.items()},
        "versions": versions(official_repo),
    }


def versions(official_repo):
    import mmcls
    import mmcv
    import mmdet
    import mmseg

    commit = "unknown"  # a copy without .git
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(["git", "-C", official_repo, "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    return {"official_commit": commit, "torch": str(torch.__version__),
            "mmcv": mmcv.__version__, "mmcls": mmcls.__version__, "mmdet": mmdet.__version__,
            "mmseg": mmseg.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", required=True,
                        help="a checkout of https://github.com/d-li14/involution")
    parser.add_argument("out", help="output folder (one <row>.pth per model zoo row)")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS),
                        help="rows to record (default: all)")
    parser.add_argument("--samples", type=int, default=SAMPLES,
                        help="values kept per stage output (default: %(default)s)")
    args = parser.parse_args(argv)

    for need in ("cls/mmcls/models/backbones/rednet.py", "det/configs/involution"):
        if not os.path.exists(os.path.join(args.official_repo, need)):
            parser.error(f"--official-repo {args.official_repo}: no {need}; expected a "
                         "checkout of https://github.com/d-li14/involution")
    try:
        import mmcv  # noqa: F401
    except ImportError:
        parser.error("OpenMMLab is not installed in this Python; run this tool with the "
                     "virtualenv's python (see the commands at the top of this file)")

    torch.set_num_threads(min(torch.get_num_threads(), 4))
    install_stand_ins(args.official_repo)
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        for row in args.rows:
            fixture = record_row(args.official_repo, row, workdir, args.samples)
            path = os.path.join(args.out, f"{row}.pth")
            torch.save(fixture, path)
            print(f"{path}: {len(fixture['stages'])} stages, "
                  f"{os.path.getsize(path) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
