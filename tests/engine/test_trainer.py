"""The engine is Detectron2's: yacs configs train with a DefaultTrainer, LazyConfigs with
lazyconfig_train_net.py's loop, each honouring the options Detectron2's own trainers honour
(DDP, checkpointer, every test set, log period, PreciseBN)."""
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, CONFIG_ROOT, requires_detectron2, yacs_config

pytestmark = requires_detectron2

DEMO = "Demo/mask_rcnn_rednet26_invfpn_invhead_shapes"


def lazy_demo():
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(CONFIG_ROOT, DEMO + ".py"))
    cfg.train.device = "cpu"
    return cfg


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from involution_d2.data import generate_shapes

    cache = tmp_path_factory.mktemp("cache")
    generate_shapes(str(cache / "shapes_v1"))
    return str(cache)


def test_lazy_options_reach_detectron2s_engine(shapes_cache, tmp_path, monkeypatch):
    """do_train (lazyconfig_train_net.py's loop) hands train.ddp, train.checkpointer and
    train.log_period to Detectron2's DDP wrapper and hooks (the loop itself stubbed)."""
    import argparse

    from detectron2.engine import SimpleTrainer, hooks
    from detectron2.utils.events import EventStorage

    from involution_d2.engine import trainer as engine

    monkeypatch.setenv("INVOLUTION_D2_CACHE", shapes_cache)
    cfg = lazy_demo()
    cfg.train.ddp.find_unused_parameters = True
    cfg.train.checkpointer.max_to_keep = 3
    cfg.train.log_period = 7
    cfg.train.output_dir = str(tmp_path)
    cfg.dataloader.train.num_workers = 0
    seen = {}

    def create_ddp_model(model, **options):
        seen["ddp"] = options
        return model

    def train(trainer, start_iter, max_iter):
        seen.update(hooks=trainer._hooks, iters=(start_iter, max_iter))
        trainer.storage = EventStorage(start_iter)

    monkeypatch.setattr(engine, "create_ddp_model", create_ddp_model)
    monkeypatch.setattr(SimpleTrainer, "train", train)
    engine.do_train(argparse.Namespace(resume=False), cfg)
    # On the CPU without device ids, which DDP takes for GPU modules only.
    assert seen["ddp"] == {"broadcast_buffers": False, "find_unused_parameters": True,
                           "fp16_compression": False, "device_ids": None}
    assert seen["iters"] == (0, cfg.train.max_iter)
    checkpointer = next(h for h in seen["hooks"] if isinstance(h, hooks.PeriodicCheckpointer))
    assert (checkpointer.period, checkpointer.max_to_keep) == (cfg.train.checkpointer.period, 3)
    assert next(h for h in seen["hooks"] if isinstance(h, hooks.PeriodicWriter))._period == 7
    assert [t.name for t in engine.read_config(cfg).tests()] == ["shapes_val"]
    # train.ddp is optional, as in lazyconfig_train_net.py: DDP's defaults then.
    del cfg.train["ddp"]
    engine.do_train(argparse.Namespace(resume=False), cfg)
    assert seen["ddp"] == {"device_ids": None}


def test_yacs_trainer_is_default_trainer_with_every_test_set(shapes_cache, tmp_path,
                                                               monkeypatch):
    """Trainer is DefaultTrainer: its hooks (PreciseBN, checkpoint period, log period 20),
    and one loader and evaluator per DATASETS.TEST entry."""
    import detectron2.engine.defaults as defaults
    from detectron2.engine import hooks

    from involution_d2.checkpoint import AtomicCheckpointer
    from involution_d2.engine import Trainer

    monkeypatch.setenv("INVOLUTION_D2_CACHE", shapes_cache)
    cfg = yacs_config(DEMO, overrides={"DATASETS.TEST": ("shapes_val", "shapes_train"),
                                       "TEST.PRECISE_BN.ENABLED": True,
                                       "MODEL.REDNET.NORM": "BN",  # PreciseBN needs BN
                                       "OUTPUT_DIR": str(tmp_path), "DATALOADER.NUM_WORKERS": 0})
    trainer = Trainer(cfg)
    # The safe checkpointer is the one that DefaultTrainer's hook saves with and that
    # resume_or_load reads, and it saves the trainer's iteration.
    assert isinstance(trainer.checkpointer, AtomicCheckpointer)
    kinds = {type(h): h for h in trainer._hooks}
    assert kinds[hooks.PeriodicCheckpointer].checkpointer is trainer.checkpointer
    assert set(trainer.checkpointer.checkpointables) == {"trainer"}
    assert defaults.create_ddp_model.__name__ == "create_ddp_model"  # DefaultTrainer's again
    assert kinds[hooks.PreciseBN]._num_iter == cfg.TEST.PRECISE_BN.NUM_ITER == 200
    assert kinds[hooks.PeriodicCheckpointer].period == cfg.SOLVER.CHECKPOINT_PERIOD
    assert kinds[hooks.PeriodicWriter]._period == 20
    evaluated = []

    def inference_on_dataset(model, loader, evaluator):
        evaluated.append(evaluator._metadata.name)
        return {"bbox": {"AP": 0.0}}

    monkeypatch.setattr(defaults, "inference_on_dataset", inference_on_dataset)
    results = Trainer.test(cfg, trainer.model)
    assert evaluated == ["shapes_val", "shapes_train"] == list(results)


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
    are written atomically: tests/e2e)."""
    import io

    import torch
    from iopath.common.file_io import PathHandler

    from involution_d2.checkpoint import AtomicCheckpointer

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
