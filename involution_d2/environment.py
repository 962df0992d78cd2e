"""What involution-d2 needs around it, for ``tools/install.py`` and ``setup.py``: the torch it
supports and the pair it pins, the torchvision built for a torch, the CuPy wheel for a CUDA
version, where Detectron2's source comes from, and where the project keeps what it makes or
fetches (the built-in datasets, Detectron2's source).

Standard library only (``probe_torch`` imports torch when called): the set-up loads this file
by its path before torch or the package is installed, and runs it as a script to probe torch
in a fresh interpreter.
"""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

MIN_PYTHON = (3, 10)
MIN_TORCH = "2.4"  # torch.library's register_fake
PINNED_TORCH = "2.14.1"  # the pair that tools/install.py installs where torch is missing,
PINNED_TORCHVISION = "0.29.1"  # the one CI tests on
SETUPTOOLS = "setuptools>=70.1,<81"  # Detectron2 builds with it; 81 drops pkg_resources
# One CuPy wheel per CUDA major version (the wheels are built per major version).
CUPY_WHEELS = {"12": "cupy-cuda12x>=13", "13": "cupy-cuda13x>=13.6"}
CACHE_ENV = "INVOLUTION_D2_CACHE"
DEFAULT_CACHE = "~/.cache/involution_d2"


def cache_dir():
    return os.path.expanduser(os.environ.get(CACHE_ENV, DEFAULT_CACHE))


def release(version):
    """The numeric release of a version string: "2.11.0+cu130" -> (2, 11, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def setuptools_is_supported(version):
    return (70, 1) <= release(version)[:2] < (81, 0)


def torch_is_supported(version):
    return release(version)[:2] >= release(MIN_TORCH)[:2]


def torchvision_for(torch_version):
    """The torchvision release series built for a torch (since torch 2.0, torchvision's
    minor version is torch's plus 15), as a pip requirement."""
    if torch_version.split("+")[0] == PINNED_TORCH:
        return f"torchvision=={PINNED_TORCHVISION}"
    major, minor = release(torch_version)[:2]
    if major != 2:
        raise ValueError(f"torch {torch_version}: only torch 2.x is supported")
    return f"torchvision==0.{minor + 15}.*"


def cupy_requirement(cuda_version):
    """The CuPy wheel, as a pip requirement, for the CUDA version torch was built with
    (``torch.version.cuda``, e.g. "12.6")."""
    major = str(cuda_version).split(".")[0]
    if major not in CUPY_WHEELS:
        known = ", ".join(f"CUDA {m}" for m in CUPY_WHEELS)
        raise ValueError(f"torch is built for CUDA {cuda_version}, for which the CUDA kernels "
                         f"have no CuPy wheel ({known} have): install a torch built for one "
                         "of those")
    return CUPY_WHEELS[major]


def cupy_wheel_names():
    """Every CuPy wheel name a machine may hold (only one may be installed at a time)."""
    return ["cupy"] + [f"cupy-cuda{major}x" for major in ("11", *CUPY_WHEELS)]


class SetupError(Exception):
    """One line for the user: what failed and what to do."""


def python_check(version=None):
    version = tuple(version or sys.version_info[:2])
    if version < MIN_PYTHON:
        raise SetupError(f"Python {version[0]}.{version[1]} is not supported: torch needs Python "
                         f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer. Run this script with a "
                         "newer python3")


def installed_version(distribution):
    importlib.invalidate_caches()
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_from(distribution):
    """(path, editable) of a distribution installed from a local path (PEP 610)."""
    try:
        record = json.loads(importlib.metadata.distribution(distribution).read_text(
            "direct_url.json") or "{}")
    except importlib.metadata.PackageNotFoundError:
        return None, False
    url = record.get("url", "")
    path = os.path.realpath(url[len("file://"):]) if url.startswith("file://") else None
    return path, bool(record.get("dir_info", {}).get("editable"))


def built_for(torch):
    """What ``probe_torch`` found, in words: "torch 2.14.1 (CPU build)", "torch 2.11.0+cu130
    (CUDA 13.0, 1 GPU)"."""
    gpus = f"{torch['gpus']} GPU{'s' * (torch['gpus'] > 1)}" if torch["gpus"] else "no GPU seen"
    where = f"CUDA {torch['cuda']}, {gpus}" if torch["cuda"] else "CPU build"
    return f"torch {torch['torch']} ({where})"


def probe_torch():
    """What this Python's torch is: {"torch", "cuda", "gpus", and "torchvision" where it runs
    torchvision.ops.nms beside it, else "torchvision_error"}; raises where torch does not
    import."""
    import torch

    found = dict(torch=torch.__version__, cuda=torch.version.cuda,
                 gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    try:
        import torchvision

        torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)
        found["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001 - any failure means "install the matching one"
        found["torchvision_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return found


# ---------------------------------------------------------------------------------------------
# Where Detectron2 comes from (it is on no package index): ("git", url, revision), or
# ("folder" | "archive" | "wheel", path)

DETECTRON2_REPOSITORY = "https://github.com/facebookresearch/detectron2.git"
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"  # the tested one
SOURCE_ENV = "INVOLUTION_D2_DETECTRON2"
ARCHIVE_ENDINGS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
LOCAL_COPY_HINT = (f"point --detectron2 (or ${SOURCE_ENV}) at a local copy of Detectron2: a "
                   "source folder, a source archive or a wheel")
NETWORK_FAILURE = re.compile(
    r"Could not resolve host|Temporary failure in name resolution|Name or service not known|"
    r"Failed to establish a new connection|Network is unreachable|Connection refused|"
    r"Connection timed out|Failed to connect|unable to access", re.IGNORECASE)


def resolve_source(text):
    if text is None:
        return ("git", DETECTRON2_REPOSITORY, DETECTRON2_COMMIT)
    if text.startswith("git+") or "://" in text:
        url = text[4:] if text.startswith("git+") else text
        url, _, revision = url.rpartition("@") if re.search(r"@[^/]+$", url) else (url, "", "")
        return ("git", url, revision or DETECTRON2_COMMIT)
    path = os.path.realpath(os.path.expanduser(text))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "setup.py")):
            raise SetupError(f"--detectron2 {text}: this folder has no setup.py, so it is not "
                             "Detectron2's source; give the folder that holds its setup.py")
        return ("folder", path)
    if not os.path.exists(path):
        raise SetupError(f"--detectron2 {text}: no such file or folder; {LOCAL_COPY_HINT}")
    if path.endswith(".whl"):
        return ("wheel", path)
    if path.endswith(ARCHIVE_ENDINGS):
        return ("archive", path)
    raise SetupError(f"--detectron2 {text}: neither a folder, a wheel (.whl) nor a source "
                     f"archive ({', '.join(ARCHIVE_ENDINGS)})")


def source_folder(source, cache):
    """Where pip installs from: a git checkout or an unpacked archive lives in the cache, where
    Detectron2's tools/ stay available."""
    if source[0] == "git":
        return os.path.join(cache, "detectron2-src", f"detectron2-{source[2][:12]}")
    if source[0] == "archive":
        name = os.path.basename(source[1])
        ending = next(e for e in ARCHIVE_ENDINGS if name.endswith(e))
        return os.path.join(cache, "detectron2-src", name[: -len(ending)])
    return source[1]


def prepare(source, cache):
    """Fetch or unpack ``source`` into the cache where needed (atomically); returns the folder."""
    folder = source_folder(source, cache)
    if source[0] not in ("git", "archive") or os.path.isfile(os.path.join(folder, "setup.py")):
        return folder
    shown = "@".join(source[1:])
    if source[0] == "git" and shutil.which("git") is None:
        raise SetupError(f"git is not installed, and it fetches Detectron2 from {source[1]}: "
                         f"install git (e.g. apt-get install git), or {LOCAL_COPY_HINT}")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".prepare-", dir=os.path.dirname(folder))
    try:
        if source[0] == "git":
            for command in (["init", "-q"], ["fetch", "-q", "--depth", "1", *source[1:]],
                            ["checkout", "-q", "FETCH_HEAD"]):
                done = subprocess.run(["git", "-C", work, *command], capture_output=True,
                                      text=True)
                if done.returncode != 0:
                    detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                    if NETWORK_FAILURE.search(done.stderr):
                        raise SetupError(f"no network: git could not fetch {shown} ({detail}); "
                                         f"{LOCAL_COPY_HINT}")
                    raise SetupError(f"git {command[0]} of {shown} failed: {detail}")
            top = work
        else:
            try:
                if source[1].endswith(".zip"):
                    with zipfile.ZipFile(source[1]) as archive:
                        archive.extractall(work)
                else:
                    with tarfile.open(source[1]) as archive:  # "data": no links out of work
                        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                        archive.extractall(work, **safe)
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
                raise SetupError(f"--detectron2 {source[1]}: cannot unpack it ({e})") from None
            entries = os.listdir(work)  # git archive output has one top folder (detectron2/)
            top = os.path.join(work, entries[0]) if len(entries) == 1 else work
            if not os.path.isfile(os.path.join(top, "setup.py")):
                raise SetupError(f"--detectron2 {source[1]}: the archive holds no setup.py at "
                                 "its top, so it is not Detectron2's source")
        os.replace(top, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


if __name__ == "__main__":
    # The set-up's probe, in a fresh interpreter: torch's line first, then Detectron2's (whose
    # compiled extension, built against another torch, may crash the interpreter).
    print(json.dumps(probe_torch()), flush=True)
    import detectron2._C  # noqa: E402,F401 - fails or crashes where it was built for another torch

    print("Detectron2 loads")
