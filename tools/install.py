#!/usr/bin/env python3
"""Set up involution-d2 in the Python that runs this script, in four steps, each skipped when
done (standard library only: it runs before torch is installed):

1. torch: a working torch of a supported version is kept (a GPU user's CUDA build stays), with
   the torchvision built for it; the pinned pair is installed where torch is missing or broken,
   or another release where asked (--torch VERSION); and setuptools >= 70.1, < 81;
2. Detectron2, built against that torch, from its repository at the pinned commit or a copy;
3. this package, editable, with its test extras;
4. where torch has CUDA and sees a GPU: the CuPy wheel for torch's CUDA, and one kernel run.

    python3 tools/install.py                                  # Detectron2 from GitHub
    python3 tools/install.py --detectron2 ~/src/detectron2    # or a folder, archive or wheel
    python3 tools/install.py --torch 2.14.1                   # replace torch with that release
    python3 tools/install.py --check                          # report; change nothing
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE, EXTRAS = "involution-d2", "test"


def _load(name):
    """A standard-library module of the package, by path: the package is not installed yet."""
    path = os.path.join(ROOT, "involution_d2", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"involution_d2_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Versions, the torch probe, what is installed and Detectron2's sources: the package owns them.
ENV = _load("environment")
SetupError, installed_version, installed_from = (ENV.SetupError, ENV.installed_version,
                                                 ENV.installed_from)
built_for, python_check = ENV.built_for, ENV.python_check


def with_torchvision(torch):
    return f"{built_for(torch)} + torchvision {torch.get('torchvision')}"
# Probes run in a fresh interpreter: what a step installed must not be hidden by what this
# process imported, and a broken library may crash the interpreter that imports it.
PROBES = {
    "torch": [ENV.__file__],  # torch's line, then whether Detectron2 loads
    "package": ["-W", "ignore", "-c",
                f"import pkg_resources; pkg_resources.require('{PACKAGE}[{EXTRAS}]')"],
    "cuda": ["-m", "involution_d2.ops.cuda_check"],
}


def say(message):
    print(message, flush=True)


def probe(what):
    """(ok, the probe's last line: its report, or its error; its first line)."""
    done = subprocess.run([sys.executable, *PROBES[what]], capture_output=True, text=True)
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    first = done.stdout.splitlines()[0] if done.stdout.strip() else ""
    if done.returncode < 0:
        return False, f"the import crashed with {signal.Signals(-done.returncode).name}", first
    return done.returncode == 0, (lines[-1] if lines else f"exit {done.returncode}"), first


_PROBED = {}  # the torch probe's answers until pip changes something


def torch_info():
    """(what ENV.probe_torch found, None), or (None, why torch does not import)."""
    if not _PROBED:
        ok, said, first = probe("torch")
        torch = json.loads(first) if first.startswith("{") else None
        _PROBED["torch"] = (torch, None if torch else said)
        _PROBED["detectron2"] = (ok, said)
    return _PROBED["torch"]


def detectron2_loads():
    """(True, _) where Detectron2's compiled extension loads beside this torch, else (False,
    why)."""
    torch_info()
    return _PROBED["detectron2"]


def pip(args, what, log_name, cache):
    """Run pip; on failure raise one line naming the cause and the full log."""
    _PROBED.clear()
    os.makedirs(os.path.join(cache, "install-logs"), exist_ok=True)
    log = os.path.join(cache, "install-logs", log_name + ".log")
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode == 0:
        return
    with open(log) as f:
        text = f.read()
    errors = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR")]
    detail = errors[-1] if errors else f"exit status {done.returncode}"
    if ENV.NETWORK_FAILURE.search(text):
        raise SetupError(f"no network: pip could not download {what} ({detail}); full log: {log}")
    raise SetupError(f"pip could not install {what}: {detail}; full log: {log}")


# ---------------------------------------------------------------------------------------------
# Steps: each returns (one line, whether it changed or would change something)


def step_torch(wanted, check, cache):
    """Keep a working torch of a supported version (unless another release is ``wanted``),
    completing it with its torchvision where that is missing or broken; where torch is missing
    or broken, or another release is wanted, install that release (default: the pinned pair)."""
    torch, error = torch_info()
    if torch and not wanted and not ENV.torch_is_supported(torch["torch"]):
        raise SetupError(f"torch {torch['torch']} is older than {ENV.MIN_TORCH}, which this "
                         "package needs: upgrade it (for a GPU, the CUDA build from pytorch.org), "
                         f"or run with --torch {ENV.PINNED_TORCH} to install the pinned pair")
    requirements, replace = [], False
    if torch and (not wanted or torch["torch"].split("+")[0] == wanted):
        if "torchvision_error" in torch:  # keep this torch; add the torchvision built for it
            why = f"no working torchvision beside torch {torch['torch']}"
            requirements = [f"torch=={torch['torch']}", ENV.torchvision_for(torch["torch"])]
    else:
        release = wanted or ENV.PINNED_TORCH
        why = (f"torch {wanted} was asked for" if torch else "torch is not installed"
               if installed_version("torch") is None else f"torch does not work ({error})")
        requirements, replace = [f"torch=={release}", ENV.torchvision_for(release)], torch or error
    if not ENV.setuptools_is_supported(installed_version("setuptools") or "0"):
        why = why if requirements else f"setuptools {installed_version('setuptools')} is unfit"
        requirements.append(ENV.SETUPTOOLS)
    if not requirements:
        return f"{with_torchvision(torch)}: kept", False
    plan = " + ".join(requirements)
    if check:
        return f"{why}: would install {plan}", True
    say(f"  {why}: installing {plan} ...")
    if replace and installed_version("torch") is not None:  # broken or replaced: start afresh
        pip(["uninstall", "-y", "torch", "torchvision"], "torch (uninstall)", "torch", cache)
    pip(["install", *requirements], plan, "torch", cache)
    torch, error = torch_info()
    if not torch or "torchvision_error" in torch:
        why = error or torch["torchvision_error"]
        raise SetupError(f"{plan} installed but does not work ({why}); pip's log: "
                         f"{os.path.join(cache, 'install-logs', 'torch.log')}")
    return f"{with_torchvision(torch)}: installed now", True


def step_detectron2(source, explicit, check, cache):
    version = installed_version("detectron2")
    wanted = os.path.realpath(ENV.source_folder(source, cache))
    torch, _ = torch_info()
    against = built_for(torch) if torch else "torch"
    if version is not None:
        loads, why = detectron2_loads()
        origin = installed_from("detectron2")[0] or "an index or an unrecorded place"
        if loads and (not explicit or origin == wanted):
            return f"Detectron2 {version} from {origin}: loads with {against}", False
        reason = (f"does not load with {against} ({why})" if not loads
                  else f"was installed from {origin}, not from {wanted}")
        say(f"  Detectron2 {version} {reason}: {'would reinstall' if check else 'reinstalling'}")
    if check:
        return f"Detectron2: would install from {wanted}", True
    builds = source[0] != "wheel"
    if builds and not (shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")):
        raise SetupError("no C++ compiler: building Detectron2 from source needs one (g++ or "
                         "clang++, as $CXX or c++ on PATH): install it (e.g. apt-get install "
                         f"g++), or point --detectron2 at a Detectron2 wheel built for {against}")
    target = ENV.prepare(source, cache)
    if version is not None:
        pip(["uninstall", "-y", "detectron2"], "Detectron2 (uninstall)", "detectron2", cache)
    say(f"  building Detectron2 from {target} against {against} (about 2 minutes on 2 cores) ..."
        if builds else f"  installing the Detectron2 wheel {target} ...")
    pip(["install", *(["--no-build-isolation"] if builds else []), target],
        f"Detectron2 from {target}", "detectron2", cache)
    loads, why = detectron2_loads()
    if not loads:
        hint = (f"a wheel loads only beside the torch it was built for: point --detectron2 at "
                f"Detectron2's source to build it against {against}" if not builds else
                f"the build log: {os.path.join(cache, 'install-logs', 'detectron2.log')}")
        raise SetupError(f"Detectron2 from {target} does not load with {against} ({why}); {hint}")
    done = "built against" if builds else "installed; loads with"
    return f"Detectron2 {installed_version('detectron2')} from {target}: {done} {against}", True


def step_package(check, cache):
    path, editable = installed_from(PACKAGE)
    done, why = (probe("package")[:2] if editable and path == os.path.realpath(ROOT) else
                 (False, f"not installed editable from {ROOT}"))
    if done:
        return f"{PACKAGE}[{EXTRAS}] {installed_version(PACKAGE)}: installed (editable)", False
    if check:
        return f"{PACKAGE}: would install (editable, [{EXTRAS}]): {why}", True
    say(f"  installing {PACKAGE} (editable) with its [{EXTRAS}] extras ...")
    pip(["install", "-e", f"{ROOT}[{EXTRAS}]"], f"{PACKAGE}[{EXTRAS}]", "involution-d2", cache)
    return f"{PACKAGE}[{EXTRAS}] {installed_version(PACKAGE)}: installed now (editable)", True


def step_cuda(check, cache):
    """Where torch has CUDA and sees a GPU: the CuPy wheel for torch's CUDA, and one kernel."""
    torch, _ = torch_info()
    later = "to add them, rerun python3 tools/install.py where torch has CUDA and sees a GPU"
    if not torch or not torch["cuda"] or not torch["gpus"]:
        why = ("torch does not import" if not torch else
               f"torch {torch['torch']} is a CPU build" if not torch["cuda"] else
               f"torch {torch['torch']} has CUDA {torch['cuda']} but sees no GPU")
        return f"CUDA kernels: not set up ({why}); {later}", False
    try:
        requirement = ENV.cupy_requirement(torch["cuda"])
    except ValueError as e:
        raise SetupError(str(e)) from None
    wheel = re.split(r"[<>=]", requirement)[0]
    driver = f"check that the GPU's driver supports CUDA {torch['cuda']}"
    installed = [name for name in ENV.cupy_wheel_names() if installed_version(name)]
    if installed:  # whatever CuPy is there, kept where it runs the kernel
        works, why, _ = probe("cuda")
        if works:
            return f"CUDA kernels: {why}", False
        if installed == [wheel]:
            raise SetupError(f"{wheel} is installed but no involution kernel ran ({why}): {driver}")
        say(f"  {', '.join(installed)} ran no kernel ({why}): replacing it with {wheel}")
    if check:
        return f"CUDA kernels: would install {requirement} (torch has CUDA {torch['cuda']})", True
    if installed:  # two CuPy packages in one environment shadow each other
        pip(["uninstall", "-y", *installed], "CuPy (uninstall)", "cupy", cache)
    say(f"  torch has CUDA {torch['cuda']}: installing {requirement} ...")
    pip(["install", requirement], requirement, "cupy", cache)
    works, why, _ = probe("cuda")
    if not works:
        raise SetupError(f"{wheel} was installed but no involution kernel ran ({why}): {driver}")
    return f"CUDA kernels: {why}", True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--detectron2", metavar="SOURCE", default=os.environ.get(ENV.SOURCE_ENV) or None,
        help=f"where Detectron2 comes from: a source folder, a source archive, a wheel, or "
             f"git+URL[@REV]; default ${ENV.SOURCE_ENV}, else {ENV.DETECTRON2_REPOSITORY} at "
             f"{ENV.DETECTRON2_COMMIT[:12]}")
    parser.add_argument("--torch", metavar="VERSION",
                        help=f"install this torch release (with its torchvision) even over a "
                             f"working torch; {ENV.PINNED_TORCH} is the tested one")
    parser.add_argument("--check", action="store_true",
                        help="say what is installed and what would be done; change nothing "
                             "(exit status 1 if anything is missing)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    cache = ENV.cache_dir()
    try:
        python_check()
        source = ENV.resolve_source(args.detectron2)
        steps = [lambda: step_torch(args.torch, args.check, cache),
                 lambda: step_detectron2(source, args.detectron2 is not None, args.check, cache),
                 lambda: step_package(args.check, cache),
                 lambda: step_cuda(args.check, cache)]
        missing = False
        for number, step in enumerate(steps, 1):
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
        say("something is missing: run python3 tools/install.py" if missing
            else "everything is installed")
        return int(missing)
    say(f"set-up done in {time.monotonic() - start:.0f} s"
        + ("" if missing else ": nothing to change"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
