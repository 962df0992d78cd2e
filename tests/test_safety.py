"""The reliability matrix, tried as a hostile but fair user would: checkpoints that would run
code, truncated and foreign files, colliding demo paths, unreadable images, typo'd
overrides, a kill -9 during a save followed by --resume, a killed launcher, a full disk,
leftovers of interrupted runs, the umask. Each case asserts its outcome; the user's commands
run in subprocesses, on a tiny LazyConfig of the shapes demo (no evaluation)."""
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import requires_detectron2, yacs_config

pytestmark = requires_detectron2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY_DEMO = os.path.join(REPO, "configs/Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.py")
YACS_DEMO = LAZY_DEMO.replace(".py", ".yaml")

# The shapes demo, made tiny: 2 images per batch, no data workers, a checkpoint every 2
# iterations, metrics every iteration, and no test set (no evaluation at the end).
TINY_CONFIG = f"""
from detectron2.config import LazyConfig
_demo = LazyConfig.load({LAZY_DEMO!r})
model, dataloader, optimizer, lr_multiplier = (
    _demo.model, _demo.dataloader, _demo.optimizer, _demo.lr_multiplier)
train = _demo.train
del dataloader["test"], dataloader["evaluator"]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
train.max_iter = 5
train.log_period = 1
train.checkpointer.period = 2
"""

# Runs a script with a fault injected into torch.save: FAULT=kill:N kills the process
# (SIGKILL) halfway through writing its N-th checkpoint; FAULT=enospc fails every save as a
# full disk does (torch's zip writer raises a RuntimeError from the OSError).
FAULTS = """
import errno, os, runpy, signal, sys
import torch

real_save, calls = torch.save, [0]
kind, _, arg = os.environ["FAULT"].partition(":")

def save(obj, f, *args, **kwargs):
    calls[0] += 1
    if kind == "kill" and calls[0] == int(arg):
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "enospc":
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "3072 vs 2966")
    return real_save(obj, f, *args, **kwargs)

torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The shapes dataset, generated once for the module."""
    from involution_d2.data import generate_shapes

    path = str(tmp_path_factory.mktemp("cache"))
    generate_shapes(os.path.join(path, "shapes_v1"))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    (folder / "tiny.py").write_text(TINY_CONFIG)
    (folder / "faults.py").write_text(FAULTS)
    return {"config": str(folder / "tiny.py"), "faults": str(folder / "faults.py")}


def run(*args, cache, env=None, drop=(), **kwargs):
    """A command run as the user runs it, from the repository."""
    env = dict(os.environ, INVOLUTION_D2_CACHE=cache, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env["PYTHONPATH"]] if "PYTHONPATH" in env
                                                  else []))
    for name in drop:
        env.pop(name, None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def last_line(text):
    return text.strip().splitlines()[-1]


class CreatesAFile:
    """A pickle payload: unpickling it creates ``path`` (it could as well run any code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pkl(folder):
    marker = os.path.join(folder, "code_ran")
    path = os.path.join(folder, "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": CreatesAFile(marker)}, "__author__": "anyone"}, f)
    return path, marker


def metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line)["iteration"] for line in f]


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
    from involution_d2.engine import CheckpointLoadError
    from involution_d2.engine.predictor import build_predictor

    evil, marker = malicious_pkl(str(tmp_path))
    cfg = yacs_config("Demo/mask_rcnn_rednet26_invfpn_invhead_shapes",
                      overrides={"MODEL.WEIGHTS": evil})
    with pytest.raises(CheckpointLoadError, match="refused to load"):
        build_predictor(cfg)
    assert not os.path.exists(marker)


def test_malicious_pth_is_refused_naming_the_file_and_the_object(tmp_path):
    from involution_d2.engine import AtomicCheckpointer, CheckpointLoadError

    path, marker = malicious_pth(str(tmp_path))
    with pytest.raises(CheckpointLoadError) as error:
        AtomicCheckpointer(torch.nn.Linear(2, 2)).load(path)
    assert not os.path.exists(marker)
    message = str(error.value)
    assert message.startswith(f"{path}: refused to load ") and "open" in message.split(":")[1]
    assert "can run code" in message and "\n" not in message


def malicious_pth(folder):
    marker = os.path.join(folder, "code_ran")
    path = os.path.join(folder, "evil.pth")
    torch.save({"model": {"weight": CreatesAFile(marker)}}, path)
    return path, marker


HOSTILE = {"pkl": malicious_pkl, "pth": malicious_pth}


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
    from involution_d2.engine import CheckpointLoadError

    evil, marker = HOSTILE[kind](str(tmp_path))
    with pytest.raises(CheckpointLoadError, match="refused to load"):
        model_zoo.get("Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.py", weights=evil,
                      device="cpu")
    assert not os.path.exists(marker)


def test_model_zoo_pkl_of_numpy_1_or_2_still_loads(tmp_path):
    """What Detectron2's model-zoo .pkl files hold: dicts of numpy arrays and scalars, as
    pickled by numpy 1 (numpy.core) or numpy 2 (numpy._core), protocol 2 or 5."""
    import collections

    from involution_d2.engine import AtomicCheckpointer

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
    from involution_d2.engine import AtomicCheckpointer, CheckpointLoadError

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


# ------------------------------------------------------------------ no data loss
def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_demo_pictures_never_replace_inputs_or_each_other(tmp_path):
    demo = _demo_module()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for path in (a / "x.png", a / "x.jpg", b / "x.png"):
        path.write_bytes(b"image")
    os.symlink(a / "x.jpg", tmp_path / "link.png")
    files = [str(a / "x.jpg"), str(a / "x.png"), str(b / "x.png")]
    paths, notes = demo.output_paths(files, str(a))  # pictures beside the inputs
    assert paths == {str(a / "x.jpg"): str(a / "x_jpg.png"), str(a / "x.png"): str(a / "x_png.png"),
                     str(b / "x.png"): str(a / "x_png_2.png")}
    assert [n[2] for n in notes] == ["x.png is the input " + str(a / "x.png"),
                                     "x.png is the input " + str(a / "x.png"),
                                     "x.png is the input " + str(a / "x.png")]
    # A link in the output folder to an input is that input.
    paths, _ = demo.output_paths([str(a / "x.jpg")], str(tmp_path))
    assert paths == {str(a / "x.jpg"): str(tmp_path / "x.png")}
    paths, _ = demo.output_paths([str(a / "x.jpg"), str(tmp_path / "link.png")], str(tmp_path))
    assert len(paths) == 2 and str(tmp_path / "link.png") not in paths.values()


def test_demo_keeps_inputs_skips_unreadable_images_and_warns_without_weights(cache, tmp_path):
    """--output is the input folder, where good.jpg's picture would be named good.png."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    source = Image.open(os.path.join(cache, "shapes_v1", "coco", "val", "00000.png"))
    source.save(folder / "good.png")
    source.convert("RGB").save(folder / "good.jpg")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    proc = run("demo.py", "--config-file", YACS_DEMO, "--input", str(folder), "--output",
               str(folder), cache=cache)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
    assert sorted(p.name for p in folder.iterdir()) == [
        "bad.jpg", "good.jpg", "good.png", "good_jpg.png", "good_png.png"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"skipped {folder / 'bad.jpg'}: not a readable image" in proc.stderr
    renamed = f"{folder / 'good.jpg'} -> {folder / 'good_jpg.png'} (good.png is the input"
    assert renamed in proc.stderr
    assert last_line(proc.stderr) == (f"drew 2 of 3 images into {folder}; skipped 1 that could "
                                      f"not be read: {folder / 'bad.jpg'}")
    assert proc.stderr.count("UNTRAINED model") == 1


def test_converter_refuses_dst_equal_to_src_and_writes_into_a_folder(tmp_path, monkeypatch):
    from official_fixtures import load_fixture, official_checkpoint

    from involution_d2.checkpoint import cli

    src = tmp_path / "rednet26.pth"
    torch.save({"state_dict": official_checkpoint(load_fixture("rednet26")), "meta": {}}, src)
    original = src.read_bytes()
    os.symlink(src, tmp_path / "link.pth")
    monkeypatch.chdir(tmp_path)
    for dst in (str(src), str(tmp_path / "link.pth"), "./rednet26.pth", "../" +
                os.path.basename(tmp_path) + "/rednet26.pth"):
        assert cli.main([str(src), dst]) == 2, dst
    assert src.read_bytes() == original
    (tmp_path / "converted").mkdir()
    assert cli.main(["rednet26.pth", "converted"]) == 0
    saved = torch.load(tmp_path / "converted" / "rednet26_d2.pth", weights_only=True)
    assert "res5.0.conv2.conv1.conv.weight" in saved["model"]
    assert cli.main(["rednet26.pth", "."]) == 0 and (tmp_path / "rednet26_d2.pth").exists()


# ------------------------------------------------------------ typos fail early
def test_lazy_override_typos_and_wrong_types_fail_naming_the_key():
    from involution_d2.engine import ConfigError, setup_config

    cases = {
        "train.max_iterr=40": r"train has no key max_iterr; did you mean max_iter\?",
        "train.max_iter=abc": r"train.max_iter takes an integer, like its current value 250",
        "train.amp.enabled=1": "takes true or false",
        "optimizer.lr=fast": "optimizer.lr takes a number",
        "model.backbone.bottom_up.depthh=50": r"has no key depthh; did you mean depth\?",
        "SOLVER.MAX_ITER": "KEY VALUE is yacs syntax",
        "--resume": "put options before the overrides",
    }
    for override, match in cases.items():
        with pytest.raises(ConfigError, match=match):
            setup_config(LAZY_DEMO, [override])
    # Keys that exist, arguments that the LazyCall's target takes, and + additions pass.
    cfg = setup_config(LAZY_DEMO, ["train.max_iter=40", "optimizer.lr=1",
                                   "model.backbone.bottom_up.stem_out_channels=32",
                                   "+train.note=kept"])
    assert (cfg.train.max_iter, cfg.optimizer.lr, cfg.train.note) == (40, 1, "kept")


def test_yacs_typos_and_unknown_config_kinds_fail_clearly(tmp_path):
    from involution_d2.engine import ConfigError, setup_config

    with pytest.raises(ConfigError, match=r"SOLVER.MAX_ITERR: no such config key; did you "
                                          r"mean SOLVER.MAX_ITER "):
        setup_config(YACS_DEMO, ["SOLVER.MAX_ITERR", "40"])
    with pytest.raises(ConfigError, match="Type mismatch.*SOLVER.MAX_ITER"):
        setup_config(YACS_DEMO, ["SOLVER.MAX_ITER", "abc"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        setup_config(YACS_DEMO, ["train.max_iter=40"])
    (tmp_path / "config.txt").write_text("SOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(ConfigError, match=r"unknown kind of config file \(.txt\); expected"):
        setup_config(str(tmp_path / "config.txt"))


def test_train_net_typo_stops_before_anything_runs(cache, tiny, tmp_path):
    out = tmp_path / "out"
    proc = run("train_net.py", "--config-file", tiny["config"], "train.max_iterr=2",
               f"train.output_dir={out}", cache=cache)
    assert proc.returncode == 2 and not out.exists()
    assert last_line(proc.stderr).startswith(
        "error: override train.max_iterr=2: train has no key max_iterr; did you mean max_iter?")


# ----------------------------------------------------------------------- faults
def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def _descendants(pid):
    """Every process below ``pid``: the whole tree, not only its children."""
    return [p for kid in _children(pid) for p in [kid] + _descendants(kid)]


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except FileNotFoundError:
        return ""


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombies have ended
    except FileNotFoundError:
        return False


def _wait_until_stopped(pids, seconds):
    deadline = time.time() + seconds
    while any(_running(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    return {p: _cmdline(p)[:120] for p in pids if _running(p)}


def _start_two_workers(cache, tiny, out):
    """A `--num-gpus 2` launcher started with & from a script (SIGINT ignored, so torch's
    own parent-death signal does nothing), one DataLoader worker per training worker; returns
    it once both train, with its whole process tree: (launcher, workers, every descendant)."""
    command = [sys.executable, "train_net.py", "--num-gpus", "2", "--config-file",
               tiny["config"], "train.max_iter=1000", "train.checkpointer.period=1000",
               "dataloader.train.num_workers=1", f"train.output_dir={out}"]
    exec_ignoring_sigint = ("import os, signal, sys; signal.signal(signal.SIGINT, "
                            "signal.SIG_IGN); os.execv(sys.executable, sys.argv[1:])")
    env = dict(os.environ, INVOLUTION_D2_CACHE=cache, PYTHONPATH=REPO)
    env.pop("OMP_NUM_THREADS", None)
    launcher = subprocess.Popen([sys.executable, "-c", exec_ignoring_sigint, *command],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "metrics.json").exists():  # both are training
        assert launcher.poll() is None and time.time() < deadline, "training never started"
        time.sleep(0.5)
    workers = [p for p in _children(launcher.pid) if "spawn_main" in _cmdline(p)]
    tree = _descendants(launcher.pid)
    assert len(workers) == 2, tree
    loader_workers = [p for w in workers for p in _descendants(w)]
    assert len(loader_workers) >= 2, "a DataLoader worker per training worker"
    assert any("resource_tracker" in _cmdline(p) for p in tree), tree
    return launcher, workers, tree


def _kill_all(launcher, pids):
    for pid in [launcher.pid] * (launcher.poll() is None) + list(pids):
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
    launcher.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cpu_workers_share_the_cores_and_the_whole_tree_stops_when_the_launcher_is_killed(
        cache, tiny, tmp_path):
    """kill -9 of the launcher: within 10 s every descendant has stopped, the training
    workers, their DataLoader workers and multiprocessing's resource tracker."""
    out = tmp_path / "out"
    launcher, workers, tree = _start_two_workers(cache, tiny, out)
    try:
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        assert _wait_until_stopped(tree, 10) == {}, "outlived their launcher"
        cores = len(os.sched_getaffinity(0))
        log = (out / "log.txt").read_text()
        assert f"2 processes on this machine, {max(1, cores // 2)} CPU threads each" in log
    finally:
        _kill_all(launcher, tree)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_training_worker_stops_the_others_with_a_clear_message(cache, tiny, tmp_path):
    """kill -9 of training worker 1: the launcher stops the other worker and ends with one
    line naming the process and the signal, and no process of the tree is left."""
    launcher, workers, tree = _start_two_workers(cache, tiny, tmp_path / "out")
    try:
        victim = sorted(workers)[1]
        os.kill(victim, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=60)  # never hangs
        assert launcher.returncode == 1, stderr[-3000:]
        # (multiprocessing's resource tracker may warn after it, of what the killed process
        # left: its semaphores, which it removes)
        errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, stderr[-3000:]
        line = errors[0]
        assert line.startswith("error: training process "), line
        assert line.endswith(" was killed by SIGKILL; the other processes were stopped. "
                             "Continue from the last checkpoint with --resume"), line
        assert _wait_until_stopped(tree, 10) == {}
    finally:
        _kill_all(launcher, tree)


# A process reading a DataLoader whose worker is busy in __getitem__ (a slow image, a
# dataset being generated): torch's worker would notice its dead parent only when it next
# polls, a minute later here.
SLOW_LOADER = """
import os, sys, time
import torch
from involution_d2.engine import loader_workers_stop_with_process

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        time.sleep(60)
        return i

loader = torch.utils.data.DataLoader(Slow(), num_workers=1)
if sys.argv[1] == "stop":
    loader = loader_workers_stop_with_process(loader)
next(iter(loader))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loader_workers_stop_with_the_process_reading_them(tmp_path):
    script = tmp_path / "slow_loader.py"
    script.write_text(SLOW_LOADER)
    env = dict(os.environ, PYTHONPATH=REPO)
    reader = subprocess.Popen([sys.executable, str(script), "stop"], env=env)
    tree = []
    try:
        deadline = time.time() + 60
        while not _descendants(reader.pid):
            assert time.time() < deadline and reader.poll() is None, "no loader worker"
            time.sleep(0.2)
        time.sleep(1.0)  # the worker is in __getitem__
        tree = _descendants(reader.pid)
        os.kill(reader.pid, signal.SIGKILL)
        reader.wait()
        assert _wait_until_stopped(tree, 10) == {}, "the loader worker outlived its reader"
    finally:
        _kill_all(reader, tree + _descendants(reader.pid))


def test_threads_per_process_share_the_cores_unless_the_user_chose():
    from involution_d2.engine import threads_per_process

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads_per_process(2, environ={}) == max(1, cores // 2)
    assert threads_per_process(4 * cores, environ={}) == 1
    assert threads_per_process(2, environ={"OMP_NUM_THREADS": "3"}) is None


def test_kill_during_a_save_then_resume(cache, tiny, tmp_path):
    """kill -9 while the 2nd checkpoint (iteration 3) is written, after the metrics of
    iteration 2; --resume continues from iteration 2, removes the half-written temporary
    file and writes metrics.json without repeats; --resume again says training is done."""
    out = tmp_path / "out"
    train = ["train_net.py", "--config-file", tiny["config"], f"train.output_dir={out}"]
    proc = run(tiny["faults"], *train, cache=cache, env={"FAULT": "kill:2"})
    assert proc.returncode == -signal.SIGKILL
    leftovers = [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith("model_0000003.pth.")
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert metrics(out) == [0, 1, 2]

    proc = run(*train[:1], "--resume", *train[1:], cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting training from iteration 2" in proc.stdout
    assert f"Removed {out / leftovers[0]}, left by an interrupted save" in proc.stdout
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert metrics(out) == [0, 1, 2, 3, 4]

    proc = run(*train[:1], "--resume", *train[1:], cache=cache)
    assert proc.returncode == 0
    assert "Training already finished: the last checkpoint has 5 of 5 iterations" in proc.stdout


def test_disk_full_ends_with_one_line_naming_the_folder(cache, tiny, tmp_path):
    out = tmp_path / "out"
    proc = run(tiny["faults"], "train_net.py", "--config-file", tiny["config"],
               "train.max_iter=2", f"train.output_dir={out}", cache=cache,
               env={"FAULT": "enospc"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line(proc.stderr).startswith(
        f"error: no space left on device in {out}: model_0000001.pth was not saved")
    assert not [f for f in os.listdir(out) if f.endswith((".tmp", ".pth"))]


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def _temporary(folder, final, host=None, pid=None, age_s=0, is_folder=False):
    from involution_d2.checkpoint.save import _host

    path = folder / f"{final}.{host or _host()}.{pid or os.getpid()}.0123abcd.tmp"
    path.mkdir() if is_folder else path.write_bytes(b"partial")
    os.utime(path, (time.time() - age_s,) * 2)
    return path.name


def test_stale_temporaries_go_and_those_of_running_writers_stay(tmp_path):
    from involution_d2.engine import AtomicCheckpointer

    dead, hour = _dead_pid(), 3600
    stale = [_temporary(tmp_path, "model_0000019.pth", pid=dead),  # its writer was killed
             _temporary(tmp_path, "model_final.pth", host="elsewhere", age_s=2 * hour),
             "model_0000039.pth.ab_cd123.tmp"]  # tempfile naming of earlier versions, old
    kept = [_temporary(tmp_path, "model_0000059.pth"),  # this process: a running writer
            _temporary(tmp_path, "last_checkpoint", host="elsewhere"),  # remote, recent
            "model_0000079.pth.xy_zw123.tmp",  # earlier versions' naming, recent
            "notes.tmp", "model_final.pth"]  # not temporaries of ours
    for name in stale[2:] + kept[2:]:
        (tmp_path / name).write_bytes(b"x")
    os.utime(tmp_path / stale[2], (time.time() - 2 * hour,) * 2)
    AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path)).remove_stale_temporaries()
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


@pytest.fixture
def tiny_shapes(monkeypatch):
    from involution_d2.data import shapes

    monkeypatch.setattr(shapes, "_SPLITS", {"train": (2, 0), "val": (1, 10_000)})
    return shapes


def test_half_made_dataset_folders_are_removed(tiny_shapes, tmp_path):
    dead = _dead_pid()
    killed = _temporary(tmp_path, "shapes_v1", pid=dead, is_folder=True)
    running = _temporary(tmp_path, "shapes_v1", is_folder=True)
    for name, age_s in ((".shapes-k3j4h5l6", 7200), (".shapes-a1b2c3d4", 0)):
        (tmp_path / name).mkdir()  # earlier versions' tempfile.mkdtemp folders
        os.utime(tmp_path / name, (time.time() - age_s,) * 2)
    tiny_shapes.generate_shapes(str(tmp_path / "shapes_v1"))
    assert sorted(os.listdir(tmp_path)) == sorted([".shapes-a1b2c3d4", running, "shapes_v1"])
    assert killed not in os.listdir(tmp_path)


def test_files_follow_the_umask(tiny_shapes, tmp_path):
    from involution_d2.engine import AtomicCheckpointer

    previous = os.umask(0o027)
    try:
        AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path / "out")).save("model_final")
        tiny_shapes.generate_shapes(str(tmp_path / "cache" / "shapes_v1"))
    finally:
        os.umask(previous)
    for name in ("model_final.pth", "last_checkpoint"):
        assert oct(os.stat(tmp_path / "out" / name).st_mode & 0o777) == oct(0o640), name
    assert oct(os.stat(tmp_path / "cache" / "shapes_v1").st_mode & 0o777) == oct(0o750)


# --------------------------------------------------------------------- messages
def test_missing_last_checkpoint_says_how_to_recover(tmp_path):
    from involution_d2.engine import AtomicCheckpointer, CheckpointLoadError

    checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    checkpointer.save("model_0000001")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(CheckpointLoadError) as error:
        checkpointer.resume_or_load("", resume=True)
    message = str(error.value)
    assert "last_checkpoint names model_0000009.pth, which does not exist" in message
    assert f"echo model_0000001.pth > {tmp_path / 'last_checkpoint'}" in message
    assert "delete last_checkpoint" in message


def test_eval_only_without_weights_warns_once(cache, tiny, tmp_path):
    proc = run("train_net.py", "--config-file", tiny["config"], "--eval-only",
               f"train.output_dir={tmp_path / 'out'}", cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("evaluating an untrained model") == 1
