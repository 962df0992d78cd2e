"""Checkpoints written atomically: a crash while saving never leaves a truncated file, and
``last_checkpoint`` always names a complete one, so ``--resume`` can continue."""
import os

from detectron2.checkpoint import DetectionCheckpointer

from ..checkpoint import atomic_write, save_atomically

__all__ = ["AtomicCheckpointer"]


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's DetectionCheckpointer with atomic ``save`` and ``tag_last_checkpoint``."""

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        save_atomically(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode()))
