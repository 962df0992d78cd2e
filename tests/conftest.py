"""The test session: a summary of what was skipped for want of Detectron2 or a GPU, and the
shared fixtures (shared functions are in helpers.py).

With CI=true a skip is a failure, except for the tests that need a CUDA GPU: CI must not pass
by skipping Detectron2, its tools, the native kernel or the export checks."""
import collections
import os
import sys

import pytest

from helpers import FAULTS, NEEDS_DETECTRON2, NEEDS_GPU, REPO, TINY_CONFIG

# The benchmarks' package lives beside the tools that run it (tools/benchmarking), outside the
# installed package.
sys.path.insert(0, os.path.join(REPO, "tools"))

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """The shapes dataset, generated once for the session."""
    from involution_d2.data import generate_shapes

    path = str(tmp_path_factory.mktemp("cache"))
    generate_shapes(os.path.join(path, "shapes_v1"))
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    (folder / "tiny.py").write_text(TINY_CONFIG)
    (folder / "faults.py").write_text(FAULTS)
    return {"config": str(folder / "tiny.py"), "faults": str(folder / "faults.py")}


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
