"""Deterministic stand-ins for official RedNet checkpoints: every tensor is drawn from a
generator seeded with its key's name, so a checkpoint is rebuilt anywhere from its key
names and shapes alone.

``tests/data/make_official_fixtures.py`` loads these weights into the official OpenMMLab models
and records their outputs (tests/data/official_fidelity/); the fidelity tests rebuild the same
checkpoint here, convert it and compare.  Both use this module, which imports torch alone
(the tool loads it by path, next to OpenMMLab, without Detectron2).

The rule, by the key's last name (the scales keep activations finite and O(1) through
RedNet-152 and every head; an involution's output is quadratic in its input, so a deep
RedNet with unit-scale weights overflows):

- ``num_batches_tracked``: 0 (int64);
- ``running_var``: uniform in [0.5, 1.5) (positive);
- ``running_mean``, ``bias``: 0.1 x N(0, 1);
- other 1-D ``weight`` (norm scales): uniform in [0.5, 1.0), times 0.2 for a bottleneck's
  last norm (``.bn3.``) so that each residual branch adds little to the identity;
- every other tensor (conv and linear weights): N(0, 1) / sqrt(fan_in), fan_in = the product
  of the dimensions after the first; an involution's kernel-generating conv
  (``.conv2.conv.weight``, the official name everywhere) also / 7, the side of its kernel,
  so that the sum over the 7 x 7 taps keeps the scale of its input.

Seed of a key: the first 8 bytes of SHA-256 of ``"<RULE>:<key>"`` (little-endian, 63 bits),
for ``torch.Generator().manual_seed``.  Inputs are ``0.5 x N(0, 1)`` seeded the same way
from a name, and the recorded output samples are positions drawn likewise.
"""
import hashlib
import math

import torch

__all__ = ["RULE", "key_seed", "seeded_tensor", "seeded_state_dict", "seeded_input",
           "sample_indices", "fingerprint"]

# Changing the rule changes every fixture: bump this and regenerate them.
RULE = "involution-d2 seeded v1"


def key_seed(name):
    """The 63-bit seed of a name."""
    digest = hashlib.sha256(f"{RULE}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def _generator(name):
    return torch.Generator().manual_seed(key_seed(name))


def seeded_tensor(key, shape):
    """The tensor of ``key`` (a checkpoint's key) with ``shape``."""
    shape = tuple(shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    gen = _generator(key)
    if leaf == "running_var":
        return torch.rand(shape, generator=gen) + 0.5
    if leaf in ("running_mean", "bias"):
        return torch.randn(shape, generator=gen) * 0.1
    if len(shape) == 1:  # a norm's scale
        scale = torch.rand(shape, generator=gen) * 0.5 + 0.5
        return scale * 0.2 if ".bn3." in key else scale
    fan_in = math.prod(shape[1:])
    scale = 1 / math.sqrt(fan_in) / (7 if key.endswith(".conv2.conv.weight") else 1)
    return torch.randn(shape, generator=gen) * scale


def seeded_state_dict(shapes):
    """{key: shape} -> {key: seeded tensor}, in the same order."""
    return {key: seeded_tensor(key, shape) for key, shape in shapes.items()}


def seeded_input(name, shape):
    """A network input: 0.5 x N(0, 1) (already normalised by the ImageNet mean and std)."""
    return torch.randn(tuple(shape), generator=_generator(f"input:{name}")) * 0.5


def sample_indices(name, numel, count):
    """Sorted flat indices of ``count`` distinct positions of a tensor of ``numel`` elements
    (all of them if it has no more), drawn by the generator seeded from ``name``."""
    if numel <= count:
        return torch.arange(numel)
    return torch.randperm(numel, generator=_generator(f"sample:{name}"))[:count].sort().values


def fingerprint(state_dict):
    """(K, 2) float64: each tensor's sum and sum of absolute values, in key order; checks
    that two machines rebuilt the same checkpoint."""
    return torch.tensor([[v.double().sum().item(), v.double().abs().sum().item()]
                         for v in state_dict.values()], dtype=torch.float64)
