"""The solvers of the configs: the official schedules (step with warm-up for COCO, poly to a
floor for Cityscapes) and gradient clipping, in both config systems."""
import os

import pytest
import torch

from helpers import CONFIG_ROOT as ROOT
from helpers import requires_detectron2, yacs_config

pytestmark = requires_detectron2


def test_lazy_solver_matches_the_official_schedule_and_clips():
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(ROOT, "COCO-Detection/retinanet_rednet50_invfpn_1x.py"))
    sched = instantiate(cfg.lr_multiplier)
    # 2000 linear warm-up iterations from 0.001x, x0.1 at 60k and 80k of 90k.
    assert [round(sched(i / 90000), 4) for i in (0, 1000, 2000, 59999, 60001, 80001)] == [
        0.001, 0.5005, 1.0, 1.0, 0.1, 0.01]
    assert cfg.train.max_iter == 90000 and cfg.model.input_format == "RGB"
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    # The optimizer clips the gradient norm of the whole model at 40 before stepping.
    model = torch.nn.Linear(4, 4)
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    assert opt.defaults["lr"] == 0.01 and isinstance(opt, torch.optim.SGD)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    opt.step()
    norm = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
    assert abs(norm.item() - 40.0) < 1e-3


def test_poly_schedule_for_yacs():
    from involution_d2.solver import build_lr_scheduler

    cfg = yacs_config("Cityscapes-SemanticSegmentation/upernet_rednet50_80k")
    cfg.SOLVER.MAX_ITER = 100
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # (0.01 - 1e-4) * (1 - t) ** 0.9 + 1e-4
    for it in (0, 50, 99):
        want = (0.01 - 1e-4) * (1 - it / 100) ** 0.9 + 1e-4
        assert abs(lrs[it] - want) < 1e-9, (it, lrs[it], want)


@pytest.mark.parametrize("base_lr", [0.01, 0.04])
def test_poly_floor_stays_absolute_when_the_lazy_lr_changes(base_lr):
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(ROOT, "Cityscapes-SemanticSegmentation",
                                       "upernet_rednet50_80k.py"))
    cfg = LazyConfig.apply_overrides(cfg, [f"optimizer.lr={base_lr}"])
    multiplier = instantiate(cfg.lr_multiplier)
    assert multiplier(0.0) == 1.0
    assert base_lr * multiplier(1.0) == pytest.approx(1e-4)  # OpenMMLab's min_lr
