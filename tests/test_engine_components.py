"""The one engine: both config systems are read by involution_d2.engine.read_config into the
options that Detectron2's own trainers honour (DDP, checkpointer, every test set, log
period), and train_net.py applies them."""
import json
import os
import subprocess
import sys

import pytest

from conftest import CONFIG_ROOT, requires_detectron2, yacs_config

pytestmark = requires_detectron2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = "Demo/mask_rcnn_rednet26_invfpn_invhead_shapes"


def lazy_demo():
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(CONFIG_ROOT, DEMO + ".py"))
    cfg.train.device = "cpu"
    return cfg


def test_lazy_options_reach_the_components():
    from involution_d2.engine import build_components

    cfg = lazy_demo()
    cfg.train.ddp.find_unused_parameters = True
    cfg.train.checkpointer.max_to_keep = 3
    cfg.train.log_period = 7
    components = build_components(cfg)
    assert components.ddp == {"broadcast_buffers": False, "find_unused_parameters": True,
                              "fp16_compression": False}
    assert components.checkpointer == {"period": cfg.train.checkpointer.period,
                                       "max_to_keep": 3}
    assert components.log_period == 7
    assert components.train_datasets == ["shapes_train"]
    assert [t.name for t in components.tests] == ["shapes_val"]


def test_yacs_options_are_those_of_default_trainer():
    from involution_d2.engine import build_components

    cfg = yacs_config(DEMO, overrides={"DATASETS.TEST": ("shapes_val", "shapes_train"),
                                       "TEST.PRECISE_BN.ENABLED": True})
    components = build_components(cfg)
    assert components.precise_bn_iters == cfg.TEST.PRECISE_BN.NUM_ITER == 200
    assert components.ddp == {"broadcast_buffers": False}
    assert components.checkpointer == {"period": cfg.SOLVER.CHECKPOINT_PERIOD}
    assert components.log_period == 20
    # One loader and evaluator per test set, as DefaultTrainer.test.
    assert [t.name for t in components.tests] == ["shapes_val", "shapes_train"]


def arguments(**kwargs):
    return kwargs


def test_every_dataset_of_a_lazy_test_loader_is_evaluated_on_its_own():
    """dataloader.test reading two datasets: two test sets, each loader reading one dataset
    and its evaluator evaluating that one (stand-in callables, so that nothing is loaded)."""
    from detectron2.config import LazyCall as L

    from involution_d2.engine import read_config

    cfg = lazy_demo()
    cfg.dataloader.test = L(arguments)(dataset=L(arguments)(names=["shapes_val", "shapes_train"]),
                                       batch_size=1)
    cfg.dataloader.evaluator = L(arguments)(dataset_name="shapes_val", output_dir="out/inference")
    tests = read_config(cfg).tests()
    assert [t.name for t in tests] == ["shapes_val", "shapes_train"]
    for test in tests:
        assert test.loader() == {"dataset": {"names": test.name}, "batch_size": 1}
        assert test.evaluator() == {"dataset_name": test.name,
                                    "output_dir": os.path.join("out/inference", test.name)}
    del cfg.dataloader["evaluator"]  # as lazyconfig_train_net.py: no evaluator, no test
    assert read_config(cfg).tests() == []


def test_data_pipeline_is_chosen_by_the_config_not_the_dataset_name():
    from involution_d2.data import CityscapesSemSegPipeline, ClassificationPipeline
    from involution_d2.data import Detectron2Pipeline, get_pipeline

    cityscapes = yacs_config("Cityscapes-SemanticSegmentation/upernet_rednet50_80k")
    assert get_pipeline(cityscapes) is CityscapesSemSegPipeline
    assert get_pipeline(yacs_config("ImageNet-Classification/rednet26")) is ClassificationPipeline
    # The shapes demo inherits the Cityscapes config and chooses Detectron2's pipeline.
    assert get_pipeline(yacs_config("Demo/semantic_fpn_rednet26_invfpn_shapes")) is (
        Detectron2Pipeline)
    # Crop and rescale of the Cityscapes pipeline come from yacs keys.
    cityscapes.merge_from_list(["INPUT.CROP.SIZE", (256, 512), "INPUT.RESIZE_SCALE.RANGE",
                                (0.75, 1.25), "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", 0.5])
    resize, crop = CityscapesSemSegPipeline.train_augmentations(cityscapes)[:2]
    assert (resize.min_scale, resize.max_scale) == (0.75, 1.25)
    assert tuple(crop.crop_size) == (256, 512) and crop.single_category_max_area == 0.5


def test_classification_refuses_to_filter_by_annotations():
    from involution_d2.data import build_classification_train_loader

    cfg = yacs_config("ImageNet-Classification/rednet26",
                      overrides={"DATALOADER.FILTER_EMPTY_ANNOTATIONS": True})
    with pytest.raises(ValueError, match="FILTER_EMPTY_ANNOTATIONS.*set it to False"):
        build_classification_train_loader(cfg)


TINY = f"""
from detectron2.config import LazyConfig
_demo = LazyConfig.load({os.path.join(CONFIG_ROOT, DEMO + ".py")!r})
model, dataloader, optimizer, lr_multiplier, train = (
    _demo.model, _demo.dataloader, _demo.optimizer, _demo.lr_multiplier, _demo.train)
del dataloader["test"], dataloader["evaluator"]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
model.backbone.bottom_up.depth = 26
train.max_iter = 4
train.checkpointer.period = 1
train.checkpointer.max_to_keep = 2
train.log_period = 2
"""


def test_train_net_keeps_max_to_keep_checkpoints_and_logs_every_log_period(tmp_path):
    from involution_d2.data import generate_shapes

    generate_shapes(str(tmp_path / "cache" / "shapes_v1"))
    (tmp_path / "tiny.py").write_text(TINY)
    out = tmp_path / "out"
    env = dict(os.environ, INVOLUTION_D2_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "train_net.py", "--config-file",
                           str(tmp_path / "tiny.py"), f"train.output_dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Saved every iteration; Detectron2's PeriodicCheckpointer keeps the last 2 (and final).
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == [
        "model_0000002.pth", "model_0000003.pth", "model_final.pth"]
    with open(out / "metrics.json") as f:
        assert [json.loads(line)["iteration"] for line in f] == [1, 3]


def test_checkpointer_writes_through_its_path_manager():
    """fvcore's save, through the checkpointer's path manager: a handler registered there
    receives the checkpoint and last_checkpoint of a save folder it serves (local folders
    are written atomically: test_safety.py, test_user_journey.py)."""
    import io

    import torch
    from iopath.common.file_io import PathHandler

    from involution_d2.engine import AtomicCheckpointer

    written = {}

    class Memory(PathHandler):
        def _get_supported_prefixes(self):
            return ["memory://"]

        def _open(self, path, mode="r", **kwargs):
            buffer = io.BytesIO() if "b" in mode else io.StringIO()
            buffer.close = lambda: written.__setitem__(path, buffer.getvalue())
            return buffer

    checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), "memory://run")
    checkpointer.path_manager.register_handler(Memory())
    checkpointer.save("model_final")
    assert written["memory://run/last_checkpoint"] == "model_final.pth"
    state = torch.load(io.BytesIO(written["memory://run/model_final.pth"]), weights_only=True)
    assert set(state["model"]) == {"weight", "bias"}
