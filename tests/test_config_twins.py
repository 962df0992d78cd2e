"""Every yacs config and its LazyConfig twin describe the same training: the same model (names,
shapes, normalisation, and outputs with the same weights), the same schedule (iterations,
evaluation and checkpoint periods, batch size, optimizer hyper-parameters per parameter,
gradient clipping, and the learning rate at every sampled iteration)."""
import glob
import os

import pytest
import torch

from conftest import CONFIG_ROOT, requires_detectron2, yacs_config

pytestmark = requires_detectron2


def twin_names():
    """Config paths (without extension) that exist as both .yaml and .py."""
    return sorted(os.path.relpath(p, CONFIG_ROOT)[:-3]
                  for p in glob.glob(os.path.join(CONFIG_ROOT, "*", "*.py"))
                  if os.path.exists(p[:-3] + ".yaml"))


TWINS = twin_names()


def lazy_config(name):
    from detectron2.config import LazyConfig

    return LazyConfig.load(os.path.join(CONFIG_ROOT, name + ".py"))


def single_process_norms(cfg, lazy):
    """SyncBN needs a process group; BN computes the same in one process."""
    if cfg.MODEL.REDNET.NORM == "SyncBN":
        cfg.MODEL.REDNET.NORM = cfg.MODEL.INVOLUTION.NORM = "BN"
        cfg.MODEL.SEM_SEG_HEAD.NORM = cfg.MODEL.AUX_SEM_SEG_HEAD.NORM = "BN"

        def to_bn(node):
            if hasattr(node, "items"):
                for key, value in node.items():
                    if value == "SyncBN":
                        node[key] = "BN"
                    else:
                        to_bn(value)
        to_bn(lazy.model)


@pytest.fixture(scope="module", params=TWINS)
def twins(request):
    from detectron2.config import instantiate
    from detectron2.modeling import build_model

    name = request.param
    cfg, lazy = yacs_config(name), lazy_config(name)
    cfg.defrost()
    single_process_norms(cfg, lazy)
    return name, cfg, lazy, build_model(cfg), instantiate(lazy.model)


def test_twin_list_covers_the_model_zoo():
    assert len(TWINS) >= 17
    assert "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x" in TWINS


def test_models_are_the_same(twins):
    from involution_d2.checkpoint import seeded

    name, _, _, ours_yacs, ours_lazy = twins
    yacs_state, lazy_state = ours_yacs.state_dict(), ours_lazy.state_dict()
    assert [(k, tuple(v.shape)) for k, v in yacs_state.items()] == [
        (k, tuple(v.shape)) for k, v in lazy_state.items()]
    for key in ("pixel_mean", "pixel_std"):  # the input normalisation
        torch.testing.assert_close(getattr(ours_yacs, key), getattr(ours_lazy, key),
                                   rtol=0, atol=0)
    assert [p.requires_grad for p in ours_yacs.parameters()] == [
        p.requires_grad for p in ours_lazy.parameters()]

    weights = seeded.seeded_state_dict({k: v.shape for k, v in yacs_state.items()})
    outputs = []
    for model in (ours_yacs, ours_lazy):
        model.load_state_dict(weights)
        model.eval()
        image = (torch.arange(3 * 64 * 96, dtype=torch.float32).view(3, 64, 96) * 7) % 256
        with torch.no_grad():
            outputs.append(model([{"image": image, "height": 64, "width": 96}])[0])
    assert outputs[0].keys() == outputs[1].keys()
    for key in outputs[0]:
        a, b = outputs[0][key], outputs[1][key]
        if hasattr(a, "get_fields"):  # Instances
            assert a.get_fields().keys() == b.get_fields().keys()
            for field in a.get_fields():
                fa, fb = a.get(field), b.get(field)
                fa, fb = (getattr(fa, "tensor", fa), getattr(fb, "tensor", fb))
                torch.testing.assert_close(fa, fb, msg=f"{name}: {key}.{field}")
        else:
            torch.testing.assert_close(a, b, msg=f"{name}: {key}")


def lr_samples(max_iter, scheduler):
    """Learning rates of the first parameter group at sampled iterations: 300 spread over the
    run, plus every iteration of the first 50 and around each tenth of it."""
    points = set(range(min(50, max_iter)))
    points |= {round(i * (max_iter - 1) / 299) for i in range(300)}
    for tenth in range(1, 10):
        points |= {max(0, tenth * max_iter // 10 + d) for d in (-1, 0, 1)}
    rates = []
    for it in sorted(points):
        scheduler.last_epoch = it
        rates.append(scheduler.get_lr()[0])
    return rates


def test_schedules_are_the_same(twins):
    from detectron2.config import instantiate
    from detectron2.solver import LRMultiplier

    from involution_d2.solver import build_lr_scheduler, build_optimizer

    name, cfg, lazy, _, model = twins
    assert cfg.SOLVER.MAX_ITER == lazy.train.max_iter
    assert cfg.TEST.EVAL_PERIOD == lazy.train.eval_period
    assert cfg.SOLVER.CHECKPOINT_PERIOD == lazy.train.checkpointer.period
    assert cfg.SOLVER.IMS_PER_BATCH == lazy.dataloader.train.total_batch_size
    assert cfg.SOLVER.BASE_LR == lazy.optimizer.lr

    yacs_opt = build_optimizer(cfg, model)
    lazy.optimizer.params.model = model
    lazy_opt = instantiate(lazy.optimizer)
    assert type(yacs_opt).__mro__[-3:] == type(lazy_opt).__mro__[-3:]  # same torch optimizer
    for attr in ("max_norm", "norm_type"):  # full-model gradient clipping, or none
        assert getattr(yacs_opt, attr, None) == getattr(lazy_opt, attr, None), attr

    def hyper(optimizer):
        by_param = {}
        for group in optimizer.param_groups:
            values = tuple(group.get(k) for k in ("lr", "momentum", "nesterov", "weight_decay"))
            for p in group["params"]:
                by_param[id(p)] = values
        return [by_param[id(p)] for p in model.parameters() if p.requires_grad]
    assert hyper(yacs_opt) == hyper(lazy_opt)

    max_iter = cfg.SOLVER.MAX_ITER
    yacs_lr = lr_samples(max_iter, build_lr_scheduler(cfg, yacs_opt))
    lazy_lr = lr_samples(max_iter, LRMultiplier(lazy_opt, instantiate(lazy.lr_multiplier),
                                                max_iter))
    torch.testing.assert_close(yacs_lr, lazy_lr, rtol=1e-6, atol=0, msg=name)
