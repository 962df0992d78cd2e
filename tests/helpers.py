"""What the tests share: skip markers, paths, configs and small models, inputs of the
operator tests, and the hostile files and commands of the reliability tests."""
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from involution_d2.ops import native, output_size

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
HAS_CUDA = torch.cuda.is_available()

NEEDS_DETECTRON2 = "needs Detectron2"
NEEDS_GPU = "needs a CUDA GPU"

requires_detectron2 = pytest.mark.skipif(
    not HAS_DETECTRON2,
    reason=f"{NEEDS_DETECTRON2} (python3 tools/install.py installs it: see README.md)",
)
requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason=f"{NEEDS_GPU} (none visible to torch)")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_ROOT = os.path.join(REPO, "configs")


def load_script(path, name=None):
    """A script of the repository (``path`` relative to it: ``tools/export_model.py``,
    ``demo.py``) imported as a module, without putting its folder on sys.path."""
    spec = importlib.util.spec_from_file_location(
        name or os.path.splitext(os.path.basename(path))[0], os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def yacs_config(name, settings=None, overrides=None):
    """The yacs config of configs/<name>.yaml on CPU; then ``settings(cfg)`` (a test's tiny
    model), then ``overrides`` ({full key: value})."""
    from detectron2.config import get_cfg

    from involution_d2.config import add_involution_config

    cfg = get_cfg()
    add_involution_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_ROOT, name + ".yaml"))
    cfg.MODEL.DEVICE = "cpu"
    if settings is not None:
        settings(cfg)
    cfg.merge_from_list([k for kv in (overrides or {}).items() for k in kv])
    return cfg


def build_yacs_model(cfg):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(cfg)


def load_recording(model, path):
    """Load ``path`` into ``model`` through the project's checkpointer (what train_net.py,
    the predictor and the model zoo use); returns the checkpointer, whose ``incompatible``
    holds the missing, unexpected and mis-shaped keys."""
    from involution_d2.checkpoint import AtomicCheckpointer

    class Recording(AtomicCheckpointer):
        def _load_model(self, checkpoint):
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

    checkpointer = Recording(model)
    checkpointer.load(str(path))
    return checkpointer


def _cupy_works():
    if not HAS_CUDA:
        return False
    from involution_d2.ops.cupy_backend import cupy_is_usable

    return cupy_is_usable()


requires_cupy = pytest.mark.skipif(
    not _cupy_works(), reason=f"{NEEDS_GPU} with CuPy (cupy-cuda12x / cupy-cuda13x)"
)


# ------------------------------------------------------------------ operator tests
def skip_if_unavailable(backend):
    if backend == "native" and not native.native_is_available():
        pytest.skip(f"the native CPU kernel is unavailable: {native._status()[1]}")


# (N, C, G, H, W, K, stride, dilation)
SHAPES = [
    (2, 8, 2, 9, 11, 3, 1, 1),
    (2, 8, 4, 10, 12, 3, 2, 1),
    (1, 12, 3, 9, 7, 5, 1, 2),
    (2, 16, 1, 13, 11, 5, 2, 2),   # odd sizes with stride 2
    (1, 32, 2, 14, 15, 7, 1, 1),
    (2, 16, 4, 15, 16, 7, 2, 1),
    (1, 6, 6, 8, 9, 7, 2, 2),      # one channel per group
    (1, 48, 2, 12, 37, 3, 1, 1),   # 24 channels per group: register blocks of 16 + 8
    (2, 14, 2, 11, 19, 3, 3, 1),   # stride 3, 7 channels per group (blocks of 4 + 2 + 1)
]


def make_inputs(shape, dtype=torch.float64, device="cpu", seed=0, padding=None):
    n, c, g, h, w, k, s, d = shape
    p = d * (k - 1) // 2 if padding is None else padding
    ho, wo = output_size(h, k, s, p, d), output_size(w, k, s, p, d)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
    wt = torch.randn(n, g, k, k, ho, wo, generator=gen, dtype=torch.float64).to(device, dtype)
    return x, wt, s, p, d


# ------------------------------------------------------------------ models
def tiny_detection(cfg):
    """RedNet-26 and small sampling budgets; untrained heads score low (RetinaNet starts at
    its 0.01 prior), so every box is kept."""
    cfg.MODEL.REDNET.DEPTH = 26
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0


# ------------------------------------------------------------------ the user's commands
LAZY_DEMO = os.path.join(REPO, "configs/Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.py")
YACS_DEMO = LAZY_DEMO.replace(".py", ".yaml")

# The shapes demo, made tiny: 2 images per batch, no data workers, a checkpoint every 2
# iterations, metrics every iteration, and no test set (no evaluation at the end).
TINY_CONFIG = f"""
from detectron2.config import LazyConfig
_demo = LazyConfig.load({LAZY_DEMO!r})
model, dataloader, optimizer, lr_multiplier = (
    _demo.model, _demo.dataloader, _demo.optimizer, _demo.lr_multiplier)
train = _demo.train
del dataloader["test"], dataloader["evaluator"]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
train.max_iter = 5
train.log_period = 1
train.checkpointer.period = 2
"""

# Runs a script with a fault injected into torch.save: FAULT=kill:N kills the process
# (SIGKILL) halfway through writing its N-th checkpoint; FAULT=enospc fails every save as a
# full disk does (torch's zip writer raises a RuntimeError from the OSError).
FAULTS = """
import errno, os, runpy, signal, sys
import torch

real_save, calls = torch.save, [0]
kind, _, arg = os.environ["FAULT"].partition(":")

def save(obj, f, *args, **kwargs):
    calls[0] += 1
    if kind == "kill" and calls[0] == int(arg):
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "enospc":
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "3072 vs 2966")
    return real_save(obj, f, *args, **kwargs)

torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(*args, cache, env=None, drop=(), **kwargs):
    """A command run as the user runs it, from the repository."""
    env = dict(os.environ, INVOLUTION_D2_CACHE=cache, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env["PYTHONPATH"]] if "PYTHONPATH" in env
                                                  else []))
    for name in drop:
        env.pop(name, None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def last_line(text):
    return text.strip().splitlines()[-1]


class CreatesAFile:
    """A pickle payload: unpickling it creates ``path`` (it could as well run any code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pkl(folder):
    marker = os.path.join(folder, "code_ran")
    path = os.path.join(folder, "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": CreatesAFile(marker)}, "__author__": "anyone"}, f)
    return path, marker


def metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line)["iteration"] for line in f]


def malicious_pth(folder):
    marker = os.path.join(folder, "code_ran")
    path = os.path.join(folder, "evil.pth")
    torch.save({"model": {"weight": CreatesAFile(marker)}}, path)
    return path, marker


HOSTILE = {"pkl": malicious_pkl, "pth": malicious_pth}


def synchronized_batch_norm_step(rank, world_size, port, recompute, results):
    """One process of a gloo group: conv + Detectron2's NaiveSyncBatchNorm + ReLU + conv on
    this process's half of a fixed batch, with or without recomputation; puts (rank, output,
    gradients, BatchNorm state, tensors of the norm's size kept for backward) into
    ``results``."""
    import torch.distributed as dist
    from torch import nn

    from detectron2.layers import NaiveSyncBatchNorm
    from involution_d2.layers.recompute import recompute_into

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        torch.manual_seed(0)
        conv, consumer = nn.Conv2d(3, 6, 3, 1, 1).double(), nn.Conv2d(6, 2, 1).double()
        norm = NaiveSyncBatchNorm(6).double()
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2)
            norm.bias.normal_()
        x = torch.randn(2 * world_size, 3, 5, 4, dtype=torch.float64)[2 * rank:2 * rank + 2]
        x.requires_grad_()
        kept = []  # tensors of the convolution's output shape kept for backward

        def pack(t):
            if t.shape == (2, 6, 5, 4):
                kept.append(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if recompute:
                out = recompute_into(consumer, x, norm, conv)
            else:
                out = consumer(torch.relu(norm(conv(x))))
        out.square().sum().backward()
        params = [x] + [p for m in (conv, norm, consumer) for p in m.parameters()]
        # As numpy arrays: pickled by value (a tensor would be shared through a file
        # descriptor that this process's exit closes).
        results.put((rank, out.detach().numpy(), [p.grad.numpy() for p in params],
                     {k: v.numpy() for k, v in norm.state_dict().items()}, len(set(kept))))
    finally:
        dist.destroy_process_group()
