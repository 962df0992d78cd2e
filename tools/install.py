#!/usr/bin/env python3
"""Set up everything involution-d2 needs, in the Python that runs this script:

1. the pinned torch + torchvision pair, and setuptools >= 70.1, < 81 (Detectron2 builds with
   it; detectron2.model_zoo imports its pkg_resources, which 81 removes);
2. Detectron2, built against that torch (no build isolation, so pip cannot build it against
   another torch), from the official repository at the pinned commit or from a local copy;
3. this package, editable, with its test extras.

Each step first checks whether it is already done, so a second run takes seconds. A Detectron2
whose compiled extension does not load (built against another torch: "undefined symbol") is
rebuilt. Standard library only: it runs before torch is installed.

    python3 tools/install.py                                  # Detectron2 from GitHub
    python3 tools/install.py --detectron2 ~/src/detectron2    # a source folder,
    python3 tools/install.py --detectron2 detectron2-src.tar.gz   # a source archive,
    python3 tools/install.py --detectron2 detectron2-0.6-cp311-cp311-linux_x86_64.whl  # a wheel
    python3 tools/install.py --check                          # say what is missing; change nothing
"""
import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH = "2.14.1"
TORCHVISION = "0.29.2"  # built for TORCH: the two are only installed as a pair
SETUPTOOLS = "setuptools>=70.1,<81"
MIN_PYTHON = (3, 10)  # the oldest Python with torch TORCH wheels
DETECTRON2_REPOSITORY = "https://github.com/facebookresearch/detectron2.git"
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
SOURCE_ENV = "INVOLUTION_D2_DETECTRON2"
PACKAGE = "involution-d2"
EXTRAS = "test"

LOCAL_COPY_HINT = (f"point --detectron2 (or ${SOURCE_ENV}) at a local copy of Detectron2: a "
                   "source folder, a source archive or a wheel")
NETWORK_FAILURE = re.compile(
    r"Could not resolve host|Temporary failure in name resolution|Name or service not known|"
    r"Failed to establish a new connection|Network is unreachable|Connection refused|"
    r"Connection timed out|Failed to connect|unable to access", re.IGNORECASE)


class SetupError(Exception):
    """One line for the user: what failed and what to do."""


def _load_cache_module():
    # Only the cache location, from the package itself, before the package is installed.
    spec = importlib.util.spec_from_file_location(
        "involution_d2_cache", os.path.join(ROOT, "involution_d2", "cache.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cache_dir():
    return _load_cache_module().cache_dir()


def say(message):
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# What is installed


def installed_version(distribution):
    importlib.invalidate_caches()
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_from(distribution):
    """The recorded origin of an installed distribution (PEP 610 direct_url.json): (url,
    editable), or (None, False) when it came from an index or has no record."""
    try:
        text = importlib.metadata.distribution(distribution).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None, False
    if not text:
        return None, False
    record = json.loads(text)
    return record.get("url"), bool(record.get("dir_info", {}).get("editable"))


def local_path(url):
    """The local path of a file:// URL (None for any other URL)."""
    if not url or not url.startswith("file:"):
        return None
    return os.path.realpath(urllib.request.url2pathname(urllib.parse.urlparse(url).path))


def base_version(version):
    return version.split("+")[0] if version else None


def python_check(version=None):
    version = tuple(version or sys.version_info[:2])
    if version < MIN_PYTHON:
        raise SetupError(
            f"Python {version[0]}.{version[1]} is not supported: torch {TORCH} needs Python "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer. Run this script with a newer python3")


def run_python(code):
    """Run ``code`` in a fresh interpreter of this Python (imports made by an earlier step
    must not hide a later install); returns (ok, last line of its error output)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    if done.returncode < 0:  # e.g. a truncated library: the import crashes
        return False, f"the import crashed with {signal.Signals(-done.returncode).name}"
    return done.returncode == 0, (lines[-1] if lines else f"exit status {done.returncode}")


def detectron2_loads():
    # Its compiled extension is what breaks when it was built against another torch.
    return run_python("import torch, detectron2, detectron2._C")


def package_is_set_up():
    url, editable = installed_from(PACKAGE)
    if not editable or local_path(url) != os.path.realpath(ROOT):
        where = local_path(url) or "an index"
        return False, ("not installed" if url is None and installed_version(PACKAGE) is None
                       else f"installed from {where}, not editable from {ROOT}")
    # Every requirement (extras included) present in a version that satisfies it.
    return run_python("import warnings; warnings.simplefilter('ignore'); import pkg_resources; "
                      f"pkg_resources.require('{PACKAGE}[{EXTRAS}]')")


def setuptools_ok(version):
    if version is None:
        return False
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return (70, 1) <= (major, minor) < (81, 0)


# ---------------------------------------------------------------------------------------------
# Where Detectron2 comes from


class Source:
    """Where Detectron2 comes from: kind is "git", "folder", "archive" or "wheel"."""

    def __init__(self, kind, location, revision=None):
        self.kind, self.location, self.revision = kind, location, revision

    def __str__(self):
        return f"{self.location}@{self.revision}" if self.kind == "git" else self.location

    @property
    def builds(self):
        return self.kind != "wheel"

    def folder(self, cache):
        """The folder pip installs from (the wheel's path for a wheel): a git checkout or an
        unpacked archive lives in the cache, where Detectron2's tools/ stay available."""
        if self.kind == "git":
            return os.path.join(cache, "detectron2-src", f"detectron2-{self.revision[:12]}")
        if self.kind == "archive":
            name = os.path.basename(self.location)
            ending = next(e for e in ARCHIVE_ENDINGS if name.endswith(e))
            return os.path.join(cache, "detectron2-src", name[: -len(ending)])
        return self.location


ARCHIVE_ENDINGS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")


def resolve_source(text):
    """A Source from the --detectron2 value (None: the official repository at the pin)."""
    if text is None:
        return Source("git", DETECTRON2_REPOSITORY, DETECTRON2_COMMIT)
    if text.startswith("git+") or "://" in text:
        url = text[4:] if text.startswith("git+") else text
        url, _, revision = url.rpartition("@") if re.search(r"@[^/]+$", url) else (url, "", "")
        return Source("git", url, revision or DETECTRON2_COMMIT)
    path = os.path.realpath(os.path.expanduser(text))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "setup.py")):
            raise SetupError(f"--detectron2 {text}: this folder has no setup.py, so it is not "
                             "Detectron2's source; give the folder that holds its setup.py")
        return Source("folder", path)
    if not os.path.exists(path):
        raise SetupError(f"--detectron2 {text}: no such file or folder; {LOCAL_COPY_HINT}")
    if path.endswith(".whl"):
        return Source("wheel", path)
    if path.endswith(ARCHIVE_ENDINGS):
        return Source("archive", path)
    raise SetupError(f"--detectron2 {text}: neither a folder, a wheel (.whl) nor a source "
                     f"archive ({', '.join(ARCHIVE_ENDINGS)})")


def _fetch_git(source, folder):
    if shutil.which("git") is None:
        raise SetupError(f"git is not installed, and it fetches Detectron2 from {source.location}: "
                         f"install git (e.g. apt-get install git), or {LOCAL_COPY_HINT}")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(folder))
    try:
        for command in (["init", "-q"], ["fetch", "-q", "--depth", "1", source.location,
                                         source.revision], ["checkout", "-q", "FETCH_HEAD"]):
            done = subprocess.run(["git", "-C", work, *command], capture_output=True, text=True)
            if done.returncode != 0:
                detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                if NETWORK_FAILURE.search(done.stderr):
                    raise SetupError(f"no network: git could not fetch {source} ({detail}); "
                                     f"{LOCAL_COPY_HINT}")
                raise SetupError(f"git {command[0]} of {source} failed: {detail}")
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack_archive(source, folder):
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(folder))
    try:
        try:
            if source.location.endswith(".zip"):
                with zipfile.ZipFile(source.location) as archive:
                    archive.extractall(work)
            else:
                with tarfile.open(source.location) as archive:
                    if hasattr(tarfile, "data_filter"):
                        archive.extractall(work, filter="data")
                    else:
                        archive.extractall(work)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise SetupError(f"--detectron2 {source.location}: cannot unpack it ({e})") from None
        # git archive output has one top folder (detectron2/); accept a flat archive too.
        entries = os.listdir(work)
        top = os.path.join(work, entries[0]) if len(entries) == 1 else work
        if not os.path.isfile(os.path.join(top, "setup.py")):
            raise SetupError(f"--detectron2 {source.location}: the archive holds no setup.py "
                             "at its top, so it is not Detectron2's source")
        os.replace(top, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare(source, cache):
    """Fetch or unpack ``source`` where needed; returns what pip installs."""
    folder = source.folder(cache)
    if source.kind in ("git", "archive") and not os.path.isfile(os.path.join(folder, "setup.py")):
        shutil.rmtree(folder, ignore_errors=True)  # a half-made folder of an interrupted run
        (_fetch_git if source.kind == "git" else _unpack_archive)(source, folder)
    return folder


def compiler():
    return shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")


# ---------------------------------------------------------------------------------------------
# Steps


def pip(args, what, log_name, cache):
    """Run pip; on failure raise one line naming the cause and the full log."""
    logs = os.path.join(cache, "install-logs")
    os.makedirs(logs, exist_ok=True)
    log = os.path.join(logs, log_name + ".log")
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                               *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode == 0:
        return
    with open(log) as f:
        text = f.read()
    errors = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR")]
    detail = errors[-1] if errors else f"exit status {done.returncode}"
    if NETWORK_FAILURE.search(text):
        raise SetupError(f"no network: pip could not download {what} ({detail}); full log: {log}")
    raise SetupError(f"pip could not install {what}: {detail}; full log: {log}")


def step_torch(check, cache):
    found = {name: installed_version(name) for name in ("torch", "torchvision", "setuptools")}
    wanted = {"torch": TORCH, "torchvision": TORCHVISION}
    if (all(base_version(found[name]) == version for name, version in wanted.items())
            and setuptools_ok(found["setuptools"])):
        return f"torch {found['torch']} + torchvision {found['torchvision']}: installed", False
    if check:
        return (f"torch {found['torch']} + torchvision {found['torchvision']}, setuptools "
                f"{found['setuptools']}: would install torch {TORCH} + torchvision "
                f"{TORCHVISION}, {SETUPTOOLS}"), True
    say(f"  installing torch {TORCH} + torchvision {TORCHVISION} (about 1 minute) ...")
    pip(["install", f"torch=={TORCH}", f"torchvision=={TORCHVISION}", SETUPTOOLS],
        f"torch {TORCH} + torchvision {TORCHVISION}", "torch", cache)
    return f"torch {TORCH} + torchvision {TORCHVISION}: installed now", True


def step_detectron2(source, explicit, check, cache):
    version = installed_version("detectron2")
    wanted = os.path.realpath(source.folder(cache))
    if version is not None:
        loads, why = detectron2_loads()
        url, _ = installed_from("detectron2")
        origin = local_path(url) or url or "an unrecorded place"
        if loads and (not explicit or local_path(url) == wanted):
            return f"Detectron2 {version} from {origin}: loads with this torch", False
        reason = (f"does not load with torch {installed_version('torch')} ({why})" if not loads
                  else f"was installed from {origin}, not from {source}")
        say(f"  Detectron2 {version} {reason}: {'would reinstall' if check else 'reinstalling'}")
    if check:
        return f"Detectron2: would install from {source}", True
    if source.builds and compiler() is None:
        raise SetupError(
            "no C++ compiler: building Detectron2 from source needs one (g++ or clang++, as $CXX "
            "or c++ on PATH): install it (e.g. apt-get install g++), or point --detectron2 at a "
            f"Detectron2 wheel built for torch {TORCH}")
    target = prepare(source, cache)
    if version is not None:
        pip(["uninstall", "-y", "detectron2"], "Detectron2 (uninstall)", "detectron2-uninstall",
            cache)
    if source.builds:
        say(f"  building Detectron2 from {target} against torch {TORCH} (about 2 minutes on 2 "
            "cores) ...")
        pip(["install", "--no-build-isolation", target], f"Detectron2 from {source}",
            "detectron2", cache)
    else:
        pip(["install", target], f"Detectron2 from {source}", "detectron2", cache)
    loads, why = detectron2_loads()
    if not loads:
        hint = (f"a wheel loads only beside the torch it was built for: point --detectron2 at "
                f"Detectron2's source (a folder or archive) to build it against torch {TORCH}"
                if not source.builds else
                f"pip's build log: {os.path.join(cache, 'install-logs', 'detectron2.log')}")
        raise SetupError(f"Detectron2 from {source} does not load with torch "
                         f"{installed_version('torch')} ({why}); {hint}")
    return f"Detectron2 {installed_version('detectron2')} from {source}: installed now", True


def step_package(check, cache):
    done, why = package_is_set_up()
    if done:
        return f"{PACKAGE}[{EXTRAS}] {installed_version(PACKAGE)}: installed (editable)", False
    if check:
        return f"{PACKAGE}: would install (editable, [{EXTRAS}]): {why}", True
    say(f"  installing {PACKAGE} (editable) with its [{EXTRAS}] extras ...")
    pip(["install", "-e", f"{ROOT}[{EXTRAS}]"], f"{PACKAGE}[{EXTRAS}]", "involution-d2", cache)
    return f"{PACKAGE}[{EXTRAS}] {installed_version(PACKAGE)}: installed now (editable)", True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--detectron2", metavar="SOURCE", default=os.environ.get(SOURCE_ENV) or None,
        help=f"where Detectron2 comes from: a source folder, a source archive (.tar.gz, .zip), "
             f"a wheel, or a git URL (git+URL[@REV]); default ${SOURCE_ENV}, else "
             f"{DETECTRON2_REPOSITORY} at {DETECTRON2_COMMIT[:12]}")
    parser.add_argument("--check", action="store_true",
                        help="say what is installed and what would be done; change nothing "
                             "(exit status 1 if anything is missing)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        python_check()
        source = resolve_source(args.detectron2)
        cache = cache_dir()
        steps = [("torch", lambda: step_torch(args.check, cache)),
                 ("Detectron2", lambda: step_detectron2(source, args.detectron2 is not None,
                                                        args.check, cache)),
                 (PACKAGE, lambda: step_package(args.check, cache))]
        missing = False
        for number, (name, step) in enumerate(steps, 1):
            began = time.monotonic()
            message, changed = step()
            missing |= changed
            took = f" ({time.monotonic() - began:.0f} s)" if changed and not args.check else ""
            say(f"[{number}/{len(steps)}] {message}{took}")
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run it again to finish (finished steps are kept)",
              file=sys.stderr)
        return 130
    if args.check:
        say("everything is installed" if not missing else "something is missing: run "
            "python3 tools/install.py")
        return 1 if missing else 0
    say(f"set-up done in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
