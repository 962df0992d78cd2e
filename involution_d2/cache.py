"""Where involution-d2 keeps what it makes or fetches: the built-in datasets and, for
tools/install.py, Detectron2's source.  Standard library only: the set-up script loads this
file before torch is installed."""
import os

CACHE_ENV = "INVOLUTION_D2_CACHE"
DEFAULT_CACHE = "~/.cache/involution_d2"


def cache_dir():
    return os.path.expanduser(os.environ.get(CACHE_ENV, DEFAULT_CACHE))
