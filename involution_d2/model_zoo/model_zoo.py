"""Configs and models of the model zoo by their path under ``configs/``, e.g.
``"COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x.yaml"`` (yacs) or ``.py``
(LazyConfig)."""
import os

from ..config.files import setup_config
from ..engine import build_model_with_weights, read_config

__all__ = ["get", "get_config", "get_config_file", "list_configs"]

# Installed: configs/ is package data here (setup.py links it in).  In a checkout where
# setup.py has not run yet: the repository's configs/.
_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGED = os.path.join(_HERE, "configs")
_CHECKOUT = os.path.normpath(os.path.join(_HERE, "..", "..", "configs"))


def _configs_root():
    for root in (_PACKAGED, _CHECKOUT):
        if os.path.isdir(root):
            return root
    raise RuntimeError(f"the model zoo's configs are missing: neither {_PACKAGED} nor "
                       f"{_CHECKOUT} exists; reinstall involution-d2")


def list_configs():
    """Paths of every model-zoo config, relative to ``configs/`` (the shared bases and the
    LazyConfig building blocks under ``common/`` left out)."""
    root = _configs_root()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "common" and not d.startswith(("_", ".")))
        for name in sorted(files):
            if name.endswith((".yaml", ".py")) and not name.startswith(("Base-", "_")):
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


def get_config_file(config_path):
    """The file of a model-zoo config, e.g. ``"COCO-Detection/retinanet_rednet50_fpn_1x.py"``."""
    path = os.path.join(_configs_root(), config_path)
    if not os.path.isfile(path):
        import difflib

        close = difflib.get_close_matches(config_path, list_configs(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else (
            "; involution_d2.model_zoo.list_configs() lists them")
        raise RuntimeError(f"{config_path!r} is not in the involution-d2 model zoo{hint}")
    return path


def get_config(config_path):
    """The config of a model-zoo config file: a yacs CfgNode with the involution keys for
    ``.yaml`` (not frozen), a LazyConfig for ``.py``; on the CPU when there is no GPU."""
    return setup_config(get_config_file(config_path), freeze=False)


def get(config_path, weights=None, device=None):
    """The model of a model-zoo config, like ``detectron2.model_zoo.get``.

    Args:
        config_path (str): as for :func:`get_config_file`.
        weights (str or None): a checkpoint file to load, e.g. official weights converted
            by ``tools/convert_official_weights.py``; None: the config's initialisation.
        device (str or None): None: "cuda" when available, else "cpu".

    Returns:
        nn.Module: in training mode, as Detectron2's (call ``.eval()`` for inference).
    """
    cfg = get_config(config_path)
    if device is not None:
        read_config(cfg).set_device(device)
    return build_model_with_weights(cfg, weights or "")
