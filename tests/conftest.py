"""Shared test helpers, and a summary of what was skipped for want of Detectron2 or a GPU.

With CI=true a skip is a failure, except for the tests that need a CUDA GPU: CI must not pass
by skipping Detectron2, its tools, the native kernel or the export checks."""
import collections
import importlib.util
import os

import pytest
import torch

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
HAS_CUDA = torch.cuda.is_available()

NEEDS_DETECTRON2 = "needs Detectron2"
NEEDS_GPU = "needs a CUDA GPU"

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

requires_detectron2 = pytest.mark.skipif(
    not HAS_DETECTRON2,
    reason=f"{NEEDS_DETECTRON2} (python3 tools/install.py installs it: see README.md)",
)
requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason=f"{NEEDS_GPU} (none visible to torch)")


CONFIG_ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")


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
    from involution_d2.engine import AtomicCheckpointer

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = (str(report.longrepr[2]) if isinstance(report.longrepr, tuple)
                  else str(report.longrepr))
        if NEEDS_GPU not in reason:
            report.outcome = "failed"
            report.longrepr = (f"CI=true and this test skipped: {reason}\n"
                               "In CI only the tests that need a CUDA GPU may skip; "
                               ".ci/run sets everything else up with tools/install.py.")


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    counts = collections.Counter()
    for report in skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        if NEEDS_DETECTRON2 in reason:
            counts["Detectron2 is not installed"] += 1
        elif NEEDS_GPU in reason:
            counts["no CUDA GPU (or no CuPy)"] += 1
        else:
            counts["other reasons (see -rs)"] += 1
    terminalreporter.section("skipped tests by cause")
    if IN_CI:
        terminalreporter.write_line("CI=true: only the tests that need a CUDA GPU may skip; "
                                    "any other skip counts as a failure")
    if not skipped:
        terminalreporter.write_line("none: every test ran")
    for cause, n in sorted(counts.items()):
        terminalreporter.write_line(f"{n} skipped because {cause}")
