"""The project's checkpointer. Loading never runs code: ``.pth`` files are read with
``torch.load(weights_only=True)`` and Detectron2's ``.pkl`` model-zoo files with an
unpickler that builds only dicts, lists, tuples, numpy arrays and scalars. Saving is atomic:
a crash while saving never leaves a truncated file, and ``last_checkpoint`` always names a
complete one, so ``--resume`` can continue."""
import collections
import errno
import importlib
import os
import pickle
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .official import (
    STEM_KERNEL_GENERATION,
    stem_involution_kernel,
    stem_kernel_generation_note,
)
from ..utils.errors import CheckpointLoadError, DiskFullError
from ..utils.file_io import atomic_open, is_disk_full, remove_stale_temporaries

__all__ = ["AtomicCheckpointer"]

# What earlier versions' tempfile.mkstemp left beside checkpoints and last_checkpoint.
_LEGACY_TEMPORARY = r"^(.+\.pth|last_checkpoint)\.[a-z0-9_]{8}\.tmp$"
_SAFE_CONTENT = "tensors, numpy arrays, numbers, strings and dicts, lists or tuples of them"


class _AtomicWrites:
    """A checkpointer's path manager (iopath) whose local files opened for writing are
    written to a temporary file and renamed into place (``atomic_open``); everything else,
    and files of other handlers (URLs), go to the path manager itself."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def open(self, path, mode="r", **kwargs):
        if "w" in mode and "://" not in str(path):
            return atomic_open(path, mode)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._path_manager, name)


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's DetectionCheckpointer that never runs code while loading, saves
    atomically, says what to do when a checkpoint is refused or missing, or the disk is
    full, and says in one line why ImageNet weights leave a detector's 7x7 stem involution
    uninitialised (instead of a generic shape-mismatch and missing-key warning)."""

    def __init__(self, model, save_dir="", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)

    def _load_model(self, checkpoint):
        left_out = self._drop_other_stem_kernel_generation(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        for model_key in left_out:
            if model_key in incompatible.missing_keys:
                incompatible.missing_keys.remove(model_key)
        return incompatible

    def _drop_other_stem_kernel_generation(self, state_dict):
        """Removes the stem involution's kernel generation from ``state_dict`` where its K
        differs from the model's, logs why, and returns the model keys left unloaded."""
        model_state = self.model.state_dict()
        left_out, kernels = [], None
        for suffix in STEM_KERNEL_GENERATION:
            for key in [k for k in state_dict if k == suffix or k.endswith("." + suffix)]:
                # Full keys match exactly; classification checkpoints hold unprefixed keys
                # that Detectron2's heuristics match by suffix.
                model_keys = [k for k in model_state if k == key or k.endswith("." + key)]
                if len(model_keys) != 1:
                    continue
                theirs, ours = state_dict[key], model_state[model_keys[0]]
                if tuple(theirs.shape) != tuple(ours.shape):
                    kernels = (stem_involution_kernel(theirs), stem_involution_kernel(ours))
                    left_out.append(model_keys[0])
                    del state_dict[key]
        if left_out:
            self.logger.warning(stem_kernel_generation_note(*kernels, left_out))
        return left_out

    def save(self, name, **kwargs):
        """fvcore's save (checkpoint, then ``last_checkpoint``), each file written
        atomically; a full disk raises DiskFullError."""
        try:
            super().save(name, **kwargs)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            error = DiskFullError(
                f"no space left on device in {os.path.abspath(self.save_dir)}: {name}.pth "
                "was not saved (the checkpoints already there are complete). Free some "
                "space there, or choose another output folder, and run again with --resume")
            error.errno = errno.ENOSPC
            raise error from exc

    def remove_stale_temporaries(self):
        """Remove the temporary files of saves that were interrupted (a kill, a crash) in
        the output folder; those of a save still running elsewhere are kept."""
        for path in remove_stale_temporaries(self.save_dir, legacy=_LEGACY_TEMPORARY):
            self.logger.info(f"Removed {path}, left by an interrupted save")

    def resume_or_load(self, path, *, resume=True):
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if not os.path.isfile(last):
                raise CheckpointLoadError(self._missing_last_checkpoint(last))
        return super().resume_or_load(path, resume=resume)

    def _missing_last_checkpoint(self, last):
        tag = os.path.join(self.save_dir, "last_checkpoint")
        saved = sorted(f for f in PathManager.ls(self.save_dir) if f.endswith(".pth"))
        fix = (f"write the name of another checkpoint of that folder into it (e.g. "
               f"`echo {saved[-1]} > {tag}`; there: {', '.join(saved)})" if saved
               else "there is no other checkpoint in that folder")
        return (f"cannot resume: {tag} names {os.path.basename(last) or 'nothing'}, which "
                f"does not exist. To resume from an earlier checkpoint, {fix}; to start "
                "over, delete last_checkpoint (or run without --resume)")

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            return _model_zoo_checkpoint(_unpickle_arrays(filename), filename, self.logger)
        if filename.endswith(".pyth"):  # pycls, read as Detectron2 reads it
            data = _torch_load_weights(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise CheckpointLoadError(f"{filename}: a .pyth (pycls) checkpoint must "
                                          "hold a dict with 'model_state'")
            state = {k: v for k, v in data["model_state"].items()
                     if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # -> _torch_load; handles URL queries

    def _torch_load(self, filename):
        data = _torch_load_weights(filename)
        if not isinstance(data, dict):
            raise CheckpointLoadError(
                f"{filename}: holds a {type(data).__name__}; expected a checkpoint (a dict "
                "{'model': state dict, ...}) or a state dict (parameter name -> tensor)")
        if "model" not in data and {"state_dict", "meta"} & set(data):
            raise CheckpointLoadError(
                f"{filename}: an OpenMMLab checkpoint ({{'state_dict': ..., 'meta': ...}}); "
                f"convert it for Detectron2 first: involution-convert {filename} "
                "converted.pth (see docs/MODEL_ZOO.md, Official weights)")
        return data


def _refused(filename, what):
    return CheckpointLoadError(
        f"{filename}: refused to load {what}: a checkpoint may hold only {_SAFE_CONTENT}, "
        "and unpickling anything else can run code. If you trust the file, load it "
        "yourself and save its state dict again (torch.save({'model': state_dict}, ...))")


def _unreadable(filename, exc):
    return CheckpointLoadError(
        f"{filename}: not a readable checkpoint: truncated (an interrupted copy or "
        f"download?) or of another format ({type(exc).__name__}: {str(exc).strip()[:200]})")


def _torch_load_weights(filename):
    """torch.load that builds tensors and plain containers only."""
    try:
        with PathManager.open(filename, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise _refused(filename, found.group(1)) from exc
        raise _unreadable(filename, exc) from exc
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise _unreadable(filename, exc) from exc


class _Refused(pickle.UnpicklingError):
    pass


def _numpy_function(name, modules):
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {name} in {modules}")


def _latin1_encode(text, encoding="latin1", errors="strict"):
    # How protocol-2 pickles written by Python 3 store bytes (numpy arrays' data).
    if encoding.lower().replace("-", "") != "latin1":
        raise _Refused(f"_codecs.encode to {encoding!r}")
    return text.encode("latin1")


def _pickle_globals():
    """The only globals a .pkl checkpoint may name: numpy arrays and scalars (under the
    module names of numpy 1 and numpy 2), OrderedDict, and bytes."""
    import numpy as np

    multiarray = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    for name in ("_reconstruct", "scalar"):
        function = _numpy_function(name, multiarray)
        allowed.update({(module, name): function for module in multiarray})
    function = _numpy_function("_frombuffer", numeric)
    allowed.update({(module, "_frombuffer"): function for module in numeric})
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Builds what Detectron2's model-zoo .pkl files hold and nothing else."""

    allowed = None

    def find_class(self, module, name):
        if _ArrayUnpickler.allowed is None:
            _ArrayUnpickler.allowed = _pickle_globals()
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _unpickle_arrays(filename):
    try:
        with PathManager.open(filename, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except _Refused as exc:
        raise _refused(filename, str(exc)) from exc
    except Exception as exc:
        raise _unreadable(filename, exc) from exc


def _model_zoo_checkpoint(data, filename, logger):
    """Detectron2's reading of a .pkl: its own model zoo, or Caffe2 / Detectron1 blobs."""
    if not isinstance(data, dict):
        raise CheckpointLoadError(
            f"{filename}: holds a {type(data).__name__}; expected a dict (a Detectron2 "
            "model-zoo file {'model': {name: array}, '__author__': ...} or Caffe2 blobs)")
    if "model" in data and "__author__" in data:
        logger.info(f"Reading a file from '{data['__author__']}'")
        return data
    if "blobs" in data:  # detection models have "blobs", ImageNet models do not
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
