"""Loading never runs code: hostile .pkl and .pth files given to every command and
function that loads a checkpoint are refused, naming the file and the object; truncated
and foreign files are named with what they are."""
import os
import pickle

import numpy as np
import pytest
import torch

from helpers import (HOSTILE, LAZY_DEMO, YACS_DEMO, last_line, malicious_pkl, malicious_pth,
                     requires_detectron2, run, yacs_config)

pytestmark = requires_detectron2


# ------------------------------------------------------------ loading never runs code
def test_train_net_eval_only_refuses_a_malicious_pkl(cache, tiny, tmp_path):
    evil, marker = malicious_pkl(str(tmp_path))
    proc = run("train_net.py", "--config-file", tiny["config"], "--eval-only",
               f"train.init_checkpoint={evil}", f"train.output_dir={tmp_path / 'out'}",
               cache=cache)
    assert not os.path.exists(marker), "the pickle ran code"
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = last_line(proc.stderr)
    assert line.startswith(f"error: {evil}: refused to load ") and "open" in line, line


def test_demo_refuses_a_malicious_pkl(cache, tmp_path):
    evil, marker = malicious_pkl(str(tmp_path))
    image = os.path.join(cache, "shapes_v1", "coco", "val", "00000.png")
    proc = run("demo.py", "--config-file", LAZY_DEMO, "--input", image, "--output",
               str(tmp_path / "pictures"), "--opts", f"train.init_checkpoint={evil}",
               cache=cache)
    assert not os.path.exists(marker), "the pickle ran code"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line(proc.stderr).startswith(f"error: {evil}: refused to load ")


def test_yacs_predictor_loads_through_the_safe_checkpointer(tmp_path):
    """Detectron2's DefaultPredictor unpickles MODEL.WEIGHTS itself; ours does not."""
    from involution_d2.utils.errors import CheckpointLoadError
    from involution_d2.engine.predictor import build_predictor

    evil, marker = malicious_pkl(str(tmp_path))
    cfg = yacs_config("Demo/mask_rcnn_rednet26_invfpn_invhead_shapes",
                      overrides={"MODEL.WEIGHTS": evil})
    with pytest.raises(CheckpointLoadError, match="refused to load"):
        build_predictor(cfg)
    assert not os.path.exists(marker)


def test_malicious_pth_is_refused_naming_the_file_and_the_object(tmp_path):
    from involution_d2.checkpoint import AtomicCheckpointer
    from involution_d2.utils.errors import CheckpointLoadError

    path, marker = malicious_pth(str(tmp_path))
    with pytest.raises(CheckpointLoadError) as error:
        AtomicCheckpointer(torch.nn.Linear(2, 2)).load(path)
    assert not os.path.exists(marker)
    message = str(error.value)
    assert message.startswith(f"{path}: refused to load ") and "open" in message.split(":")[1]
    assert "can run code" in message and "\n" not in message


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("tool, args", [
    ("tools/export_model.py", ["--format", "export", "--size", "64", "64", "--output", "{out}"]),
    ("tools/analyze_model.py", ["--tasks", "parameter"]),
])
def test_every_tool_that_loads_weights_refuses_hostile_checkpoints(tmp_path, tool, args, kind):
    """The tools load MODEL.WEIGHTS through the one safe loader: nothing in the file runs,
    and the command stops with one line naming the file (the benchmark tools take no
    checkpoint: their models keep random weights)."""
    evil, marker = HOSTILE[kind](str(tmp_path))
    args = [a.format(out=tmp_path / "out") for a in args]
    proc = run(tool, *args, "--config-file", YACS_DEMO, "MODEL.WEIGHTS", evil,
               cache=str(tmp_path))
    assert not os.path.exists(marker), "the pickle ran code"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line(proc.stderr).startswith(f"error: {evil}: refused to load "), proc.stderr


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_model_zoo_get_refuses_hostile_checkpoints(tmp_path, kind):
    from involution_d2 import model_zoo
    from involution_d2.utils.errors import CheckpointLoadError

    evil, marker = HOSTILE[kind](str(tmp_path))
    with pytest.raises(CheckpointLoadError, match="refused to load"):
        model_zoo.get("Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.py", weights=evil,
                      device="cpu")
    assert not os.path.exists(marker)


def test_model_zoo_pkl_of_numpy_1_or_2_still_loads(tmp_path):
    """What Detectron2's model-zoo .pkl files hold: dicts of numpy arrays and scalars, as
    pickled by numpy 1 (numpy.core) or numpy 2 (numpy._core), protocol 2 or 5."""
    import collections

    from involution_d2.checkpoint import AtomicCheckpointer

    source = torch.nn.Conv2d(2, 3, 1)
    arrays = collections.OrderedDict((k, v.numpy()) for k, v in source.state_dict().items())
    data = {"model": arrays, "__author__": "model zoo", "matching_heuristics": True,
            "scale": np.float32(1.0), "raw": b"\x00\xff"}
    numpy1 = pickle.dumps(data, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray\n_reconstruct" in numpy1
    for name, payload in (("numpy1.pkl", numpy1), ("numpy2.pkl", pickle.dumps(data, 5))):
        (tmp_path / name).write_bytes(payload)
        target = torch.nn.Conv2d(2, 3, 1)
        AtomicCheckpointer(target).load(str(tmp_path / name))
        torch.testing.assert_close(target.weight, source.weight)


def test_truncated_and_foreign_files_fail_naming_the_file(tmp_path):
    from involution_d2.checkpoint import AtomicCheckpointer
    from involution_d2.utils.errors import CheckpointLoadError

    good = tmp_path / "good.pth"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, good)
    files = {
        "truncated.pth": (good.read_bytes()[:300], "truncated"),
        "photo.pth": (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a readable checkpoint"),
        "empty.pkl": (b"", "not a readable checkpoint"),
        "list.pkl": (pickle.dumps([1, 2]), "holds a list"),
    }
    torch.save(torch.zeros(2), tmp_path / "tensor.pth")
    torch.save({"state_dict": {"backbone.stem.0.conv.weight": torch.zeros(1)}, "meta": {}},
               tmp_path / "openmmlab.pth")
    expected = {name: match for name, (_, match) in files.items()}
    expected.update({"tensor.pth": "holds a Tensor",
                     "openmmlab.pth": "OpenMMLab checkpoint.*involution-convert"})
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
    for name, match in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(CheckpointLoadError, match=match) as error:
            AtomicCheckpointer(torch.nn.Linear(2, 2)).load(path)
        assert str(error.value).startswith(f"{path}: "), name
