"""Detectron2's launcher, made safe to leave: worker processes stop when their launcher dies
and share the CPU cores, and a UserError ends the command with one line."""
import ctypes
import os
import signal
import sys
import threading
import time

import torch
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from .errors import USER_ERROR_EXIT, UserError

__all__ = ["launch", "share_cpu_cores", "stop_with_launcher", "threads_per_process"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_launcher(launcher_pid):
    """End this process when the process ``launcher_pid`` (its parent) dies, even by
    ``kill -9``: Detectron2's workers would otherwise go on training as orphans. Linux:
    the kernel sends SIGTERM (prctl PR_SET_PDEATHSIG); elsewhere a thread watches the parent
    pid. (torch's workers ask for SIGINT, which is ignored by processes started with ``&``
    from a script: they survived.)"""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:  # inherited; would void the signal
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
                if os.getppid() != launcher_pid:  # it died before prctl
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == launcher_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="stop_with_launcher", daemon=True).start()


def threads_per_process(local_processes, environ=os.environ):
    """CPU threads for each of ``local_processes`` processes on this machine: the cores this
    process may run on, shared equally; None when the user chose (OMP_NUM_THREADS)."""
    if environ.get("OMP_NUM_THREADS"):
        return None
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return max(1, cores // local_processes)


def share_cpu_cores(local_processes):
    """Give each of the processes on this machine its share of the cores (torch would give
    each all of them, and they would contend for them)."""
    threads = threads_per_process(local_processes)
    if threads is not None:
        torch.set_num_threads(threads)


def _worker(main_func, args, launcher_pid):
    if comm.get_world_size() > 1:
        if os.getpid() != launcher_pid:
            stop_with_launcher(launcher_pid)
        share_cpu_cores(comm.get_local_size())
    try:
        return main_func(args)
    except UserError as exc:
        prefix = f"error (process {comm.get_rank()}): " if comm.get_world_size() > 1 else "error: "
        print(prefix + str(exc), file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)


def launch(main_func, args, preflight=None):
    """Detectron2's ``launch(main_func, ...)`` with the arguments of its
    ``default_argument_parser``; ``preflight(args)`` runs first, in this process (checks that
    should fail before processes start). Returns the exit status: 0, or USER_ERROR_EXIT
    after a UserError, printed as one line ``error: ...`` by the process that met it."""
    try:
        if preflight is not None:
            preflight(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT
    try:
        detectron2_launch(_worker, args.num_gpus, num_machines=args.num_machines,
                          machine_rank=args.machine_rank, dist_url=args.dist_url,
                          args=(main_func, args, os.getpid()))
    except SystemExit as exc:  # one process: _worker's exit
        return exc.code
    except ProcessExitedException as exc:
        if exc.exit_code == USER_ERROR_EXIT:  # the worker has said why
            return USER_ERROR_EXIT
        raise
    return 0
