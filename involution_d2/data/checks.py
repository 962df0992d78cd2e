"""Pre-flight checks of datasets, registered where the datasets are registered, so that a
missing dataset fails before training starts, naming the path and how to get the data
(Detectron2 would fail later, deep inside a loader)."""
import os

from detectron2.data import MetadataCatalog

__all__ = ["check_dataset", "register_dataset_check"]

_CHECKS = {}


def register_dataset_check(dataset_name, check):
    """Run ``check()`` (which raises FileNotFoundError saying what is missing) for
    ``dataset_name`` in :func:`check_dataset`."""
    _CHECKS[dataset_name] = check


def check_dataset(dataset_name):
    """The check registered for ``dataset_name``; otherwise that the ``json_file`` and
    ``image_root`` of its metadata (Detectron2's builtin COCO-style datasets) exist."""
    if dataset_name in _CHECKS:
        _CHECKS[dataset_name]()
        return
    meta = MetadataCatalog.get(dataset_name)
    for key in ("json_file", "image_root"):
        path = getattr(meta, key, None)
        if path is not None and not os.path.exists(path):
            value = os.environ.get("DETECTRON2_DATASETS")
            env = (f"DETECTRON2_DATASETS={value!r}" if value is not None
                   else "DETECTRON2_DATASETS is not set, so datasets are looked up in ./datasets")
            raise FileNotFoundError(
                f"dataset {dataset_name!r}: {key} {path} does not exist ({env}). Put the data "
                "there (see https://detectron2.readthedocs.io/en/latest/tutorials/"
                "builtin_datasets.html) or point DETECTRON2_DATASETS at the folder that holds it."
            )
