"""Errors that the user can fix, whose messages say what went wrong and what to do: the
command-line tools print them as one line, ``error: ...``, without a traceback."""

import sys

__all__ = ["UserError", "ConfigError", "CheckpointLoadError", "DiskFullError", "USER_ERROR_EXIT",
           "exit_status"]

USER_ERROR_EXIT = 2  # exit status of a command that stopped on a UserError (as argparse's)


class UserError(Exception):
    """A failure caused by the command's input or environment, not by a bug."""


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be right: unknown key, wrong type, format."""


class CheckpointLoadError(UserError, RuntimeError):
    """A checkpoint that was refused (it could run code) or cannot be read."""


class DiskFullError(UserError, OSError):
    """No space left where a file was being written."""


def exit_status(run, *args):
    """``run(*args)`` as a command's body, giving its exit status: what it returns where that
    is an int, else 0; where it stops on a UserError, USER_ERROR_EXIT, with the error printed
    as one line ``error: ...`` (no traceback)."""
    try:
        status = run(*args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
