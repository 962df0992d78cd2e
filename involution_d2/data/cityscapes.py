"""Cityscapes semantic segmentation (gtFine, 19 train ids) through Detectron2's own loader,
with the dataset root read when the data is loaded and a helpful error when files are missing.

Detectron2 registers "cityscapes_fine_sem_seg_{train,val}" with the root it finds when
``detectron2.data`` is first imported; the metadata of those names (stuff_classes,
ignore_label=255) is used as it is.
"""
import os

from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

from .checks import register_dataset_check

_SPLITS = {"cityscapes_fine_sem_seg_train": "train", "cityscapes_fine_sem_seg_val": "val"}
_IMAGE_SUFFIX = "leftImg8bit.png"
# What Detectron2's loader reads or checks for each image: the train ids, the polygons (for
# the image size) and the two label images that it asserts exist. labelTrainIds, which is not
# in the zips but made by cityscapesscripts, comes first: it is the one usually missing.
_GT_SUFFIXES = ("gtFine_labelTrainIds.png", "gtFine_polygons.json", "gtFine_labelIds.png",
                "gtFine_instanceIds.png")


def cityscapes_root():
    """``$DETECTRON2_DATASETS/cityscapes``, the variable defaulting to "datasets" as in
    Detectron2's builtin datasets."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                        "cityscapes")


def _not_found(problem, path, split):
    root = os.path.abspath(cityscapes_root())
    value = os.environ.get("DETECTRON2_DATASETS")
    env = (f"DETECTRON2_DATASETS={value!r}" if value is not None
           else "DETECTRON2_DATASETS is not set, so it defaults to 'datasets'")
    return FileNotFoundError(
        f"Cityscapes {split}: {problem}: {path}\n"
        f"Cityscapes is looked up in $DETECTRON2_DATASETS/cityscapes = {root} ({env}).\n"
        f"Expected layout:\n"
        f"  {root}/\n"
        f"    leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        f"    gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png\n"
        f"                          and _gtFine_polygons.json, _gtFine_labelIds.png,"
        f" _gtFine_instanceIds.png\n"
        f"To fix: download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from"
        f" https://www.cityscapes-dataset.com/downloads/, unzip both in {root}, then create"
        f" the labelTrainIds files:\n"
        f"  pip install cityscapesscripts\n"
        f"  CITYSCAPES_DATASET={root} python -m"
        f" cityscapesscripts.preparation.createTrainIdLabelImgs"
    )


def check_cityscapes_sem_seg(split):
    """Check that ``split`` ("train" or "val") is laid out as Detectron2's semantic loader
    needs: images, and for each its labelTrainIds, polygons and label files. Raises
    FileNotFoundError naming the first missing path and saying how to get the data."""
    root = cityscapes_root()
    image_dir = os.path.join(root, "leftImg8bit", split)
    gt_dir = os.path.join(root, "gtFine", split)
    for folder in (image_dir, gt_dir):
        if not os.path.isdir(folder):
            raise _not_found("no such folder", folder, split)
    images, missing = 0, []
    # Detectron2 takes every entry of image_dir for a city and asserts that a city holds
    # nothing but images, so anything else fails there with a bare assertion.
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        if not os.path.isdir(city_dir):
            raise _not_found("not a city folder, but Detectron2 reads it as one", city_dir, split)
        for name in sorted(os.listdir(city_dir)):
            if not name.endswith("_" + _IMAGE_SUFFIX):
                raise _not_found(f"not a *_{_IMAGE_SUFFIX}, the only files Detectron2 accepts"
                                 " in a city folder", os.path.join(city_dir, name), split)
            images += 1
            stem = name[: -len(_IMAGE_SUFFIX)]
            for suffix in _GT_SUFFIXES:
                path = os.path.join(gt_dir, city, stem + suffix)
                if not os.path.isfile(path):
                    missing.append(path)
    if not images:
        raise _not_found("no images", os.path.join(image_dir, "<city>", "*_" + _IMAGE_SUFFIX),
                         split)
    if missing:
        problem = f"{len(missing)} annotation file(s) missing for {images} images, first"
        raise _not_found(problem, missing[0], split)


def cityscapes_sem_seg_dicts(dataset_name):
    """The dataset dicts of "cityscapes_fine_sem_seg_train" or "..._val", loaded by Detectron2's
    ``load_cityscapes_semantic`` from the current ``cityscapes_root()`` after
    ``check_cityscapes_sem_seg``. The dataset function for LazyConfig dataloaders."""
    if dataset_name not in _SPLITS:
        raise KeyError(f"{dataset_name!r} is not one of {sorted(_SPLITS)}")
    split = _SPLITS[dataset_name]
    check_cityscapes_sem_seg(split)
    root = cityscapes_root()
    return load_cityscapes_semantic(os.path.join(root, "leftImg8bit", split),
                                    os.path.join(root, "gtFine", split))


def register_cityscapes_checks():
    """Check Detectron2's "cityscapes_fine_sem_seg_{train,val}" with
    :func:`check_cityscapes_sem_seg` before training (done on import of involution_d2.data)."""
    for name, split in _SPLITS.items():
        register_dataset_check(name, lambda split=split: check_cityscapes_sem_seg(split))
