"""involution_d2.model_zoo: every config by its path, from a checkout and from an installed
(non-editable) package run in another folder."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import CONFIG_ROOT, requires_detectron2

pytestmark = requires_detectron2

REPO = os.path.dirname(CONFIG_ROOT)


def test_list_configs_names_every_config_of_the_checkout():
    from involution_d2 import model_zoo

    names = model_zoo.list_configs()
    assert "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x.yaml" in names
    assert "ImageNet-Classification/rednet152.py" in names
    assert not [n for n in names if n.startswith("common") or "/Base-" in n]
    on_disk = sorted(os.path.relpath(os.path.join(d, f), CONFIG_ROOT)
                     for d, _, files in os.walk(CONFIG_ROOT) for f in files
                     if f.endswith((".py", ".yaml")) and "common" not in d
                     and not f.startswith("Base-"))
    assert names == on_disk


@pytest.mark.parametrize("name", ["COCO-Detection/retinanet_rednet50_invfpn_1x.py",
                                  "Cityscapes-SemanticSegmentation/upernet_rednet50_80k.yaml"])
def test_get_config_of_both_systems(name):
    from involution_d2 import model_zoo

    cfg = model_zoo.get_config(name)
    if name.endswith(".yaml"):
        assert cfg.MODEL.META_ARCHITECTURE == "EncoderDecoderSegmentor"
        cfg.SOLVER.MAX_ITER = 10  # not frozen: the user may change it
    else:
        assert cfg.model.backbone.bottom_up.depth == 50


def test_unknown_config_names_the_closest_ones():
    from involution_d2 import model_zoo

    with pytest.raises(RuntimeError, match="retinanet_rednet50_fpn_1x.py"):
        model_zoo.get_config_file("COCO-Detection/retinanet_rednet50_fpn.py")


def test_get_builds_the_model_and_loads_local_weights(tmp_path):
    from involution_d2 import model_zoo
    from involution_d2.checkpoint import AtomicCheckpointer

    torch.manual_seed(0)
    model = model_zoo.get("ImageNet-Classification/rednet26.py", device="cpu")
    AtomicCheckpointer(model, str(tmp_path)).save("weights")
    torch.manual_seed(1)
    loaded = model_zoo.get("ImageNet-Classification/rednet26.yaml",
                           weights=str(tmp_path / "weights.pth"), device="cpu")
    # The .py and .yaml twins build the same network, and every tensor was loaded.
    assert_same_state_dict(loaded.state_dict(), model.state_dict())
    # Not equal by chance: without the weights, seed 1 builds other values.
    torch.manual_seed(1)
    fresh = model_zoo.get("ImageNet-Classification/rednet26.yaml", device="cpu")
    differ = [k for k, v in fresh.state_dict().items()
              if v.is_floating_point() and not torch.equal(v, model.state_dict()[k])]
    assert "backbone.linear.weight" in differ and len(differ) > 50, differ


def assert_same_state_dict(got, expected):
    """The same keys (not just as many: zip would stop at the shorter one), then the same
    dtype, shape and values per key, each failure naming its keys."""
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing keys: {missing}; extra keys: {extra}"
    assert list(got) == list(expected), "the same keys in another order"
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, (key, got[key].dtype, value.dtype)
        assert got[key].shape == value.shape, (key, tuple(got[key].shape), tuple(value.shape))
        assert torch.equal(got[key], value), f"{key}: other values than the saved ones"


def test_same_state_dict_names_the_missing_and_extra_keys():
    """The comparison above fails on key sets that zip() would have let pass."""
    a = {"w": torch.zeros(2), "b": torch.zeros(1)}
    with pytest.raises(AssertionError, match=r"missing keys: \['b'\]; extra keys: \[\]"):
        assert_same_state_dict({"w": torch.zeros(2)}, a)
    with pytest.raises(AssertionError, match=r"missing keys: \[\]; extra keys: \['x'\]"):
        assert_same_state_dict(dict(a, x=torch.zeros(1)), a)
    with pytest.raises(AssertionError, match="'w', \\(3,\\), \\(2,\\)"):
        assert_same_state_dict({"w": torch.zeros(3), "b": torch.zeros(1)}, a)
    with pytest.raises(AssertionError, match="b: other values"):
        assert_same_state_dict({"w": torch.zeros(2), "b": torch.ones(1)}, a)
    assert_same_state_dict({"w": torch.zeros(2), "b": torch.zeros(1)}, a)


def test_installed_package_has_the_configs_outside_the_checkout(tmp_path):
    """A wheel, installed into a plain folder and imported from another folder."""
    wheel_dir, site, source = tmp_path / "wheel", tmp_path / "site", tmp_path / "source"
    # The checkout's files as a fresh clone has them (no build/ left by an earlier build).
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("needs the project's git checkout")
    for name in files.stdout.splitlines():
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", str(source), "-w",
                          str(wheel_dir)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheel_dir.iterdir()
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, cwd=tmp_path)
    script = (
        "import involution_d2, involution_d2.model_zoo as zoo\n"
        "print(involution_d2.__file__)\n"
        "print(zoo.get_config_file('COCO-Detection/faster_rcnn_rednet50_fpn_1x.py'))\n"
        "cfg = zoo.get_config('COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_1x.py')\n"
        "print(type(cfg.model.backbone).__name__, len(zoo.list_configs()))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    package, config_file, summary = out.stdout.split("\n")[:3]
    assert package.startswith(str(site)) and config_file.startswith(str(site))
    from involution_d2 import model_zoo

    assert summary.split() == ["DictConfig", str(len(model_zoo.list_configs()))]


def test_every_lazy_config_has_exactly_detectron2s_top_level_keys():
    """What Detectron2's lazyconfig_train_net.py reads, and no helper variable leaked in."""
    from detectron2.config import LazyConfig

    from involution_d2 import model_zoo

    for name in model_zoo.list_configs():
        if name.endswith(".py"):
            cfg = LazyConfig.load(model_zoo.get_config_file(name))
            assert sorted(cfg.keys()) == [
                "dataloader", "lr_multiplier", "model", "optimizer", "train"], name
