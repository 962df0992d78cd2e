"""A built-in dataset that needs no download: coloured circles, squares and triangles.

Generated deterministically on first use into ``$INVOLUTION_D2_CACHE/shapes_v1`` (default
``~/.cache/involution_d2``) and registered in Detectron2's catalogs:

- ``shapes_train`` / ``shapes_val``: instances in COCO format (boxes and polygon masks),
  loaded by Detectron2's ``load_coco_json``; evaluated with COCOEvaluator;
- ``shapes_sem_seg_train`` / ``shapes_sem_seg_val``: the same scenes as semantic labels laid
  out like Cityscapes (``leftImg8bit/``, ``gtFine/*_labelTrainIds.png``), loaded by
  Detectron2's Cityscapes loader; evaluated with SemSegEvaluator.
"""
import json
import math
import os
import shutil

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic
from detectron2.data.datasets.coco import load_coco_json

from ..environment import cache_dir
from ..utils.file_io import make_temporary_folder, remove_stale_temporaries

__all__ = ["SHAPE_CLASSES", "shapes_root", "generate_shapes", "register_shapes"]

SHAPE_CLASSES = ["circle", "square", "triangle"]
_SPLITS = {"train": (300, 0), "val": (50, 10_000)}  # images, seed offset
_IMAGE_SIZE = 128
_VERSION = "shapes_v1"  # bump when the generator changes: a new folder is made
# Earlier versions built the dataset in tempfile.mkdtemp(prefix=".shapes-") folders.
_LEGACY_TEMPORARY = r"^\.shapes-[a-z0-9_]{8}$"


def shapes_root():
    return os.path.join(cache_dir(), _VERSION)


def _polygon(kind, cx, cy, r, angle):
    """Vertices (x, y) of a shape of circumradius r."""
    n = {"circle": 32, "square": 4, "triangle": 3}[kind]
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n),
             cy + r * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)]


def _scene(rng):
    """1-3 shapes that do not overlap: [(class index, polygon, colour)], background."""
    shapes, boxes = [], []
    for _ in range(rng.randint(1, 4)):
        for _ in range(20):  # rejection sampling of a free spot
            r = rng.uniform(14, 30)
            cx, cy = rng.uniform(r, _IMAGE_SIZE - r, size=2)
            box = (cx - r, cy - r, cx + r, cy + r)
            if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1]
                   for b in boxes):
                cls = rng.randint(len(SHAPE_CLASSES))
                poly = _polygon(SHAPE_CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * math.pi))
                shapes.append((cls, poly, tuple(int(v) for v in rng.randint(110, 256, 3))))
                boxes.append(box)
                break
    background = tuple(int(v) for v in rng.randint(0, 90, 3))
    return shapes, background


def _write_split(root, split):
    from PIL import Image, ImageDraw

    num_images, seed = _SPLITS[split]
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)]}
    image_dir = os.path.join(root, "coco", split)
    sem_img_dir = os.path.join(root, "cityscapes", "leftImg8bit", split, "shapes")
    sem_gt_dir = os.path.join(root, "cityscapes", "gtFine", split, "shapes")
    for d in (image_dir, sem_img_dir, sem_gt_dir):
        os.makedirs(d)
    for i in range(num_images):
        rng = np.random.RandomState(seed + i)
        shapes, background = _scene(rng)
        image = Image.new("RGB", (_IMAGE_SIZE, _IMAGE_SIZE), background)
        label = Image.new("L", (_IMAGE_SIZE, _IMAGE_SIZE), 0)
        draw, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
        for cls, poly, colour in shapes:
            draw.polygon(poly, fill=colour)
            draw_label.polygon(poly, fill=cls + 1)  # train ids: 0 background, 1.. shapes
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
            box = [x0, y0, min(max(xs), _IMAGE_SIZE) - x0, min(max(ys), _IMAGE_SIZE) - y0]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": cls + 1,
                "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
                "segmentation": [[round(v, 2) for p in poly for v in p]],
            })
        name = f"{i:05d}.png"
        image.save(os.path.join(image_dir, name))
        coco["images"].append({"id": i + 1, "file_name": name, "height": _IMAGE_SIZE,
                               "width": _IMAGE_SIZE})
        # Cityscapes layout: Detectron2's loader also reads polygons.json (for the size) and
        # checks for the labelIds / instanceIds images.
        stem = f"shapes_{i:06d}_000000_"
        image.save(os.path.join(sem_img_dir, stem + "leftImg8bit.png"))
        for suffix in ("gtFine_labelTrainIds.png", "gtFine_labelIds.png"):
            label.save(os.path.join(sem_gt_dir, stem + suffix))
        Image.new("L", label.size, 0).save(os.path.join(sem_gt_dir, stem + "gtFine_instanceIds.png"))
        with open(os.path.join(sem_gt_dir, stem + "gtFine_polygons.json"), "w") as f:
            json.dump({"imgHeight": _IMAGE_SIZE, "imgWidth": _IMAGE_SIZE, "objects": []}, f)
    with open(os.path.join(root, "coco", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f)


def generate_shapes(root=None):
    """Generate the dataset under ``root`` (default ``shapes_root()``) unless it is there.
    Safe for several processes at once: each writes a private folder and renames it into
    place; a process that finds the folder already there keeps that one. Half-made folders
    of runs that were killed are removed (those of running generators are kept)."""
    root = root or shapes_root()
    parent = os.path.dirname(os.path.abspath(root))
    remove_stale_temporaries(parent, legacy=_LEGACY_TEMPORARY)
    if os.path.isdir(root):
        return root
    tmp = make_temporary_folder(root)
    try:
        for split in _SPLITS:
            _write_split(tmp, split)
        os.rename(tmp, root)
    except OSError:
        if not os.path.isdir(root):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _instances(split):
    root = generate_shapes()
    return load_coco_json(os.path.join(root, "coco", f"instances_{split}.json"),
                          os.path.join(root, "coco", split), f"shapes_{split}")


def _semantic(split):
    root = generate_shapes()
    return load_cityscapes_semantic(os.path.join(root, "cityscapes", "leftImg8bit", split),
                                    os.path.join(root, "cityscapes", "gtFine", split))


def register_shapes():
    """Register the four datasets (idempotent); nothing is generated until one is loaded."""
    for split in _SPLITS:
        name = f"shapes_{split}"
        if name not in DatasetCatalog:
            DatasetCatalog.register(name, lambda s=split: _instances(s))
            # No json_file: COCOEvaluator builds the COCO json from the dataset dicts.
            MetadataCatalog.get(name).set(thing_classes=list(SHAPE_CLASSES),
                                          evaluator_type="coco")
        name = f"shapes_sem_seg_{split}"
        if name not in DatasetCatalog:
            DatasetCatalog.register(name, lambda s=split: _semantic(s))
            MetadataCatalog.get(name).set(stuff_classes=["background"] + SHAPE_CLASSES,
                                          ignore_label=255, evaluator_type="sem_seg")
