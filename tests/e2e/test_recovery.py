"""Recovery: kill -9 during a save then --resume, a full disk, leftovers of interrupted
runs, the umask, a missing last checkpoint, evaluation without weights."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import last_line, metrics, requires_detectron2, run

pytestmark = requires_detectron2


# ----------------------------------------------------------------------- faults
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
    from involution_d2.utils.file_io import _host

    path = folder / f"{final}.{host or _host()}.{pid or os.getpid()}.0123abcd.tmp"
    path.mkdir() if is_folder else path.write_bytes(b"partial")
    os.utime(path, (time.time() - age_s,) * 2)
    return path.name


def test_stale_temporaries_go_and_those_of_running_writers_stay(tmp_path):
    from involution_d2.checkpoint import AtomicCheckpointer

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
    from involution_d2.checkpoint import AtomicCheckpointer

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
    from involution_d2.checkpoint import AtomicCheckpointer
    from involution_d2.utils.errors import CheckpointLoadError

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
