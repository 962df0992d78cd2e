"""Checkpoints written atomically: a crash while saving never leaves a truncated file, and
``last_checkpoint`` always names a complete one, so ``--resume`` can continue."""
import os

from detectron2.checkpoint import DetectionCheckpointer

from ..checkpoint import (
    STEM_KERNEL_GENERATION,
    atomic_write,
    save_atomically,
    stem_involution_kernel,
    stem_kernel_generation_note,
)

__all__ = ["AtomicCheckpointer"]


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's DetectionCheckpointer with atomic ``save`` and ``tag_last_checkpoint``,
    which says in one line why ImageNet weights leave a detector's 7x7 stem involution
    uninitialised (instead of a generic shape-mismatch and missing-key warning)."""

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
