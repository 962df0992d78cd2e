"""Every yacs config and its LazyConfig twin describe the same training: the same model (names,
shapes, normalisation, and outputs with the same weights), the same schedule (iterations,
evaluation and checkpoint periods, batch size, optimizer hyper-parameters per parameter,
gradient clipping, and the learning rate at every sampled iteration)."""
import glob
import os

import pytest
import torch

from helpers import CONFIG_ROOT, requires_detectron2, yacs_config

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
    import seeded

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


def describe(augmentations):
    """The augmentations (a list or an AugmentationList) as (class name, {argument: value})
    pairs, read back from the arguments of each one's __init__, sequences as lists."""
    import inspect

    from detectron2.data import transforms as T

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    described = []
    for aug in getattr(augmentations, "augs", augmentations):
        if isinstance(aug, T.AugmentationList):
            described += describe(aug)
            continue
        names = [p.name for p in inspect.signature(type(aug).__init__).parameters.values()
                 if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        args = {n: plain(getattr(aug, n)) for n in names if hasattr(aug, n)}
        if isinstance(aug, T.ResizeShortestEdge) and len(set(args["short_edge_length"])) == 1:
            # One size: (800,) and (800, 800), "choice" and "range" all draw it.
            args["short_edge_length"] = args["short_edge_length"][0]
            args.pop("sample_style")
        described.append((type(aug).__name__, args))
    return described


def lazy_arguments(node):
    """The arguments a LazyCall node calls its target with, defaults included."""
    import inspect

    from detectron2.utils.registry import locate

    target = node._target_
    target = locate(target) if isinstance(target, str) else target
    arguments = {p.name: p.default for p in inspect.signature(target).parameters.values()
                 if p.default is not inspect.Parameter.empty}
    arguments.update({k: v for k, v in node.items() if k != "_target_"})
    return target, arguments


# What a test mapper ignores: Detectron2's DatasetMapper drops the annotations of test images.
TRAINING_ONLY = {"use_instance_mask", "instance_mask_format", "use_keypoint",
                 "keypoint_hflip_indices", "recompute_boxes"}


def mapper_settings(mapper):
    """Everything a dataset mapper does to its input: its class, its augmentations and its
    other attributes (format, masks, keypoints, proposals, box recomputation)."""
    ignored = {"augmentations", "logger"} | (set() if mapper.is_train else TRAINING_ONLY)
    settings = {k: v for k, v in vars(mapper).items() if k not in ignored}
    return type(mapper).__name__, describe(mapper.augmentations), settings


@pytest.fixture(scope="module", params=TWINS)
def pipelines(request):
    """(name, yacs config, LazyConfig) without building models."""
    name = request.param
    return name, yacs_config(name), lazy_config(name)


def test_input_pipelines_are_the_same(pipelines):
    """Train and test mappers (augmentations with their parameters: resize, crop, flip,
    photometric; image format, masks), loader settings (datasets, workers, batch sizes,
    aspect-ratio grouping, empty-image filter, sampler) and the evaluator of each test set.
    (The normalisation is the model's pixel_mean / pixel_std: test_models_are_the_same.)"""
    from detectron2.config import instantiate
    from detectron2.data import get_detection_dataset_dicts

    from involution_d2.data import get_pipeline
    from involution_d2.evaluation import evaluator_class

    name, cfg, lazy = pipelines
    pipeline = get_pipeline(cfg)
    for split, is_train in (("train", True), ("test", False)):
        yacs_mapper = mapper_settings(pipeline.build_mapper(cfg, is_train))
        lazy_mapper = mapper_settings(instantiate(lazy.dataloader[split].mapper))
        assert yacs_mapper == lazy_mapper, f"{name}: {split} mapper"

    _, train = lazy_arguments(lazy.dataloader.train)
    _, test = lazy_arguments(lazy.dataloader.test)
    dataset_target, train_dataset = lazy_arguments(lazy.dataloader.train.dataset)
    names = train_dataset.get("names", train_dataset.get("dataset_name"))
    assert list(cfg.DATASETS.TRAIN) == ([names] if isinstance(names, str) else list(names))
    if dataset_target is get_detection_dataset_dicts:
        assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS == train_dataset["filter_empty"], name
    assert cfg.DATALOADER.NUM_WORKERS == train["num_workers"] == test["num_workers"], name
    assert cfg.DATALOADER.ASPECT_RATIO_GROUPING == train["aspect_ratio_grouping"], name
    assert cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler" and train["sampler"] is None
    assert cfg.TEST.IMS_PER_BATCH == test["batch_size"], f"{name}: test batch size"

    # One evaluator per test set; the LazyConfig's evaluates the dataset its loader reads.
    _, test_dataset = lazy_arguments(lazy.dataloader.test.dataset)
    names = test_dataset.get("names", test_dataset.get("dataset_name"))
    evaluator_target, evaluator = lazy_arguments(lazy.dataloader.evaluator)
    assert list(cfg.DATASETS.TEST) == ([names] if isinstance(names, str) else list(names))
    assert list(cfg.DATASETS.TEST) == [evaluator["dataset_name"]]
    assert [evaluator_class(n) for n in cfg.DATASETS.TEST] == [evaluator_target], name
