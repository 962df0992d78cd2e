"""Detectron2's own tools run this project's LazyConfigs: `import involution_d2` (done by the
config files) registers every component and dataset.  Needs Detectron2's tools/ folder: the
source folder tools/install.py installed Detectron2 from has it (or set DETECTRON2_TOOLS)."""
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from helpers import CONFIG_ROOT, requires_detectron2

pytestmark = requires_detectron2

DEMO = os.path.join(CONFIG_ROOT, "Demo", "mask_rcnn_rednet26_invfpn_invhead_shapes.py")
# Tiny and quick: 2 iterations of 2 images, and an evaluation with no detections (the test
# is about the tools running the config, not about what 2 iterations learn).
QUICK = ["dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
         "dataloader.test.num_workers=0", "model.roi_heads.box_predictor.test_score_thresh=1.1"]


def detectron2_tools():
    """Detectron2's tools/: $DETECTRON2_TOOLS, else beside the source folder Detectron2 was
    installed from (pip's record of it, PEP 610: what tools/install.py leaves), else beside
    the imported package (an editable install)."""
    folders = [os.environ.get("DETECTRON2_TOOLS")]
    if importlib.util.find_spec("detectron2") is not None:
        url = json.loads(importlib.metadata.distribution("detectron2").read_text(
            "direct_url.json") or "{}").get("url", "")
        if url.startswith("file:"):
            source = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
            folders.append(os.path.join(source, "tools"))
        package = os.path.dirname(importlib.util.find_spec("detectron2").origin)
        folders.append(os.path.join(os.path.dirname(package), "tools"))
    return next((f for f in folders if f and os.path.isdir(f)), None)


requires_tools = pytest.mark.skipif(
    detectron2_tools() is None,
    reason="Detectron2's tools/ folder is absent (installed without its sources); "
           "set DETECTRON2_TOOLS to a checkout's tools/ to run these tests")


def run_tool(name, *args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return subprocess.run([sys.executable, os.path.join(detectron2_tools(), name), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def iterations(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line)["iteration"] for line in f if '"iteration"' in line]


@requires_tools
def test_lazyconfig_train_net_trains_resumes_and_evaluates_the_demo(tmp_path):
    out = str(tmp_path / "out")
    common = [f"train.output_dir={out}", "train.checkpointer.period=1", *QUICK]

    first = run_tool("lazyconfig_train_net.py", "--config-file", DEMO,
                     "train.max_iter=2", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert os.path.exists(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"

    resumed = run_tool("lazyconfig_train_net.py", "--config-file", DEMO, "--resume",
                       "train.max_iter=3", *common, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 2" in resumed.stderr + resumed.stdout
    assert max(iterations(out)) == 3  # the third iteration ran

    evaluated = run_tool("lazyconfig_train_net.py", "--config-file", DEMO, "--eval-only",
                         f"train.init_checkpoint={out}/model_final.pth", *common, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Loading from " in evaluated.stderr + evaluated.stdout
    assert "Start inference on 50 batches" in evaluated.stderr + evaluated.stdout


@requires_tools
def test_analyze_model_counts_the_demo_parameters(tmp_path):
    result = run_tool("analyze_model.py", "--config-file", DEMO, "--tasks", "parameter",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The parameter table of the whole model and of its involution backbone.
    assert "backbone.bottom_up" in result.stdout + result.stderr
