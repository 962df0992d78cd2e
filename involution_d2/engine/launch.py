"""Detectron2's launcher, made safe to leave: every process it starts stops when its parent
dies (``involution_d2.utils.processes``); a process killed or crashed stops the others with
one line saying which; workers share the CPU cores; a UserError ends the command with one
line."""
import os
import sys

from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from ..utils.errors import USER_ERROR_EXIT, UserError
from ..utils.processes import share_cpu_cores, stop_with_launcher

__all__ = ["launch"]


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
        how = (f"was killed by {exc.signal_name}" if exc.signal_name
               else f"exited with status {exc.exit_code}")
        print(f"error: training process {exc.error_index} (pid {exc.error_pid}) {how}; the "
              "other processes were stopped. Continue from the last checkpoint with --resume",
              file=sys.stderr, flush=True)
        return 1
    return 0
