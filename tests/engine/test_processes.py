"""Processes: workers share the CPU cores, and no process outlives its parent: kill -9 of
the launcher or of one worker ends the whole tree (walked through /proc)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, requires_detectron2

pytestmark = requires_detectron2


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
    try:
        deadline = time.time() + 180
        while not (out / "metrics.json").exists():  # both are training
            assert launcher.poll() is None and time.time() < deadline, "training never started"
            time.sleep(0.5)
        # The loader workers may start a moment after the first metrics are written.
        deadline = time.time() + 30
        while True:
            workers = [p for p in _children(launcher.pid) if "spawn_main" in _cmdline(p)]
            loader_workers = [p for w in workers for p in _descendants(w)]
            if len(loader_workers) >= 2 or time.time() > deadline:
                break
            time.sleep(0.5)
        tree = _descendants(launcher.pid)
        assert len(workers) == 2, tree
        assert len(loader_workers) >= 2, "a DataLoader worker per training worker"
        assert any("resource_tracker" in _cmdline(p) for p in tree), tree
    except BaseException:  # a failed start leaves nothing running for the next test
        _kill_all(launcher, _descendants(launcher.pid))
        raise
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
from involution_d2.utils.processes import loader_workers_stop_with_process

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
    from involution_d2.utils.processes import threads_per_process

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads_per_process(2, environ={}) == max(1, cores // 2)
    assert threads_per_process(4 * cores, environ={}) == 1
    assert threads_per_process(2, environ={"OMP_NUM_THREADS": "3"}) is None
