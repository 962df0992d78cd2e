"""The user journey, run as a user runs it: train_net.py and demo.py in subprocesses on the
built-in shapes data (train, checkpoint, --resume, --eval-only, pictures, two processes)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO, requires_detectron2

pytestmark = requires_detectron2

DET_DEMO = "configs/Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.yaml"
SEG_DEMO = "configs/Demo/semantic_fpn_rednet26_invfpn_shapes.yaml"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The shapes dataset, generated once for the module."""
    path = str(tmp_path_factory.mktemp("cache"))
    env = dict(os.environ, INVOLUTION_D2_CACHE=path)
    subprocess.run([sys.executable, "-c", "import involution_d2.data as d; d.generate_shapes()"],
                   cwd=REPO, env=env, check=True)
    return path


def run(script, *args, cache, env=None, timeout=600):
    env = dict(os.environ, INVOLUTION_D2_CACHE=cache, **(env or {}))
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def copypaste(log, task):
    """The AP row that Detectron2 prints for a task ("bbox", "segm")."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.endswith(f"copypaste: Task: {task}"):
            return [float(v) for v in lines[i + 2].split("copypaste: ")[1].split(",")]
    raise AssertionError(f"no {task} results in the log")


def test_train_resume_evaluate_and_draw(cache, tmp_path):
    out = str(tmp_path / "run")
    small = ["SEED", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "20",
             "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "(1000,)", "OUTPUT_DIR", out]
    run("train_net.py", "--config-file", DET_DEMO, "SOLVER.MAX_ITER", "40", *small, cache=cache)
    assert {"model_0000019.pth", "model_final.pth", "last_checkpoint", "metrics.json"} <= set(
        os.listdir(out))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    assert not [f for f in os.listdir(out) if ".tmp" in f]  # atomic writes leave nothing
    trained = [m["iteration"] for m in metrics(out) if "total_loss" in m]
    assert trained[-1] == 39  # (evaluation results are logged after the last iteration)

    # --resume continues from the saved iteration up to the new end.
    log = run("train_net.py", "--config-file", DET_DEMO, "--resume", "SOLVER.MAX_ITER", "60",
              *small, cache=cache)
    assert "Starting training from iteration 40" in log
    resumed = [m["iteration"] for m in metrics(out) if "total_loss" in m]
    assert resumed[-1] == 59 and [i for i in resumed if i > 39][0] < 60
    trained_box_ap = copypaste(log, "bbox")

    # --eval-only with the final weights reproduces the numbers reported after training.
    log = run("train_net.py", "--config-file", DET_DEMO, "--eval-only", "MODEL.WEIGHTS",
              os.path.join(out, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"),
              cache=cache)
    import numpy as np

    np.testing.assert_array_equal(copypaste(log, "bbox"), trained_box_ap)  # nan == nan here

    # demo.py draws the detections into one picture per image.  After 60 iterations the
    # scores are low: keep every box the model has (its own test threshold too).
    images = os.path.join(cache, "shapes_v1", "coco", "val")
    pictures = str(tmp_path / "pictures")
    run("demo.py", "--config-file", DET_DEMO, "--input", os.path.join(images, "00000.png"),
        os.path.join(images, "00001.png"), "--output", pictures, "--confidence-threshold", "0",
        "--opts", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", cache=cache)
    from PIL import Image

    for name in ("00000.png", "00001.png"):
        drawn = np.asarray(Image.open(os.path.join(pictures, name)).convert("RGB"))
        original = np.asarray(Image.open(os.path.join(images, name)).convert("RGB"))
        assert drawn.shape == original.shape
        assert (drawn != original).any(axis=2).mean() > 0.01  # boxes / masks were drawn


def test_lazy_config_trains_and_evaluates(cache, tmp_path):
    out = str(tmp_path / "lazy")
    log = run("train_net.py", "--config-file", DET_DEMO.replace(".yaml", ".py"),
              "train.max_iter=6", "dataloader.train.total_batch_size=2",
              "train.checkpointer.period=3", f"train.output_dir={out}", cache=cache)
    assert len(copypaste(log, "segm")) == 6
    assert {"model_0000002.pth", "model_final.pth"} <= set(os.listdir(out))


def test_two_processes_equal_one_with_the_same_total_batch(cache, tmp_path):
    """Detectron2's launcher on CPU (gloo): 2 processes x 2 images == 1 process x 4 images.
    The semantic demo's loss is a mean over equally many pixels per image and GroupNorm
    does not depend on the batch; dropout and random flips are off. The 2 processes train
    with MODEL.REDNET.WITH_CP (same results): checkpointed blocks under DDP."""
    common = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SEED", "7",
              "INPUT.RANDOM_FLIP", "none", "MODEL.SEM_SEG_HEAD.DROPOUT", "0.0",
              "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0"]
    outs = {}
    for procs in (1, 2):
        outs[procs] = str(tmp_path / f"procs{procs}")
        with_cp = ["MODEL.REDNET.WITH_CP", "True"] if procs == 2 else []
        run("train_net.py", "--config-file", SEG_DEMO, "--num-gpus", str(procs),
            *common, *with_cp, "OUTPUT_DIR", outs[procs], cache=cache)
    # The logged loss (of the last iteration: it depends on two updates of the weights).
    losses = [[m["total_loss"] for m in metrics(outs[p]) if "total_loss" in m] for p in (1, 2)]
    assert losses[0] and losses[0] == pytest.approx(losses[1], rel=1e-4)
    # The final weights, compared in a fresh interpreter as a user would load them.
    compare = (
        "import sys, torch\n"
        "a, b = (torch.load(f, weights_only=True)['model'] for f in sys.argv[1:])\n"
        "assert a.keys() == b.keys()\n"
        "for k in a:\n"
        "    torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)\n"
        "print('weights equal')\n"
    )
    out = run("-c", compare, *(os.path.join(outs[p], "model_final.pth") for p in (1, 2)),
              cache=cache)
    assert "weights equal" in out


def test_missing_dataset_names_the_path_and_the_variable(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nowhere"))
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file",
         "configs/COCO-Detection/faster_rcnn_rednet50_fpn_1x.yaml", "OUTPUT_DIR",
         str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "FileNotFoundError" in proc.stderr
    assert str(tmp_path / "nowhere" / "coco") in proc.stderr
    assert "DETECTRON2_DATASETS" in proc.stderr


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from involution_d2.checkpoint import AtomicCheckpointer

    model = torch.nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_final")
    before = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]

    def crash(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save("model_final")
    monkeypatch.undo()
    after = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    torch.testing.assert_close(after["weight"], before["weight"])  # the old one survives
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
