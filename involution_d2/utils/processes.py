"""Processes that never outlive the one that started them: training workers stop with their
launcher and DataLoader workers with their training worker, even when it is killed by
``kill -9``; and processes that share the machine's CPU cores instead of each taking all."""
import ctypes
import os
import signal
import sys
import threading
import time

import torch

__all__ = ["loader_workers_stop_with_process", "share_cpu_cores", "stop_with_launcher",
           "threads_per_process"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent(parent_pid, signum):
    """End this process when its parent ``parent_pid`` dies, even by ``kill -9``. Linux: the
    kernel sends ``signum`` (prctl PR_SET_PDEATHSIG); elsewhere a thread watches the parent
    pid."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # it died before prctl
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="stop_with_parent", daemon=True).start()


def stop_with_launcher(launcher_pid):
    """End this training worker when its launcher ``launcher_pid`` dies, even by ``kill -9``:
    Detectron2's workers would otherwise go on training as orphans. The signal is SIGTERM.
    (torch's workers ask for SIGINT, which is ignored by processes started with ``&`` from a
    script: they survived.)"""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:  # inherited; would void the signal
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _stop_with_parent(launcher_pid, signal.SIGTERM)


class _StopWithParent:
    """A DataLoader ``worker_init_fn``: the loader worker is killed (SIGKILL) when the process
    reading from it dies, then runs the loader's own ``worker_init_fn``. (torch's loader
    workers notice a dead parent only at their next poll, and one blocked at exit never
    does: they outlived a killed training worker.)"""

    def __init__(self, worker_init_fn, parent_pid):
        self.worker_init_fn = worker_init_fn
        self.parent_pid = parent_pid

    def __call__(self, worker_id):
        _stop_with_parent(self.parent_pid, signal.SIGKILL)
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


def loader_workers_stop_with_process(loader):
    """``loader``, whose worker processes now stop when this process dies: every
    ``torch.utils.data.DataLoader`` in it (Detectron2 wraps its DataLoader in datasets that
    group or map its batches) gets a ``worker_init_fn`` that asks the kernel for that."""
    item, seen = loader, set()
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        if isinstance(item, torch.utils.data.DataLoader) and item.num_workers > 0 \
                and not isinstance(item.worker_init_fn, _StopWithParent):
            item.worker_init_fn = _StopWithParent(item.worker_init_fn, os.getpid())
        inner = getattr(item, "dataset", None)
        item = inner if inner is not None else getattr(item, "_dataset", None)
    return loader


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
