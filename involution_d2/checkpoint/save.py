"""Writing files so that no reader ever sees half of one."""
import os
import tempfile

import torch

__all__ = ["atomic_write", "save_atomically"]


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path`` (a
    rename within one folder is atomic): an interrupted run leaves the old file or none."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_atomically(obj, path):
    """torch.save ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))
