"""tools/install.py, the set-up command of README's Quick start: what it recognises, the one
line it gives for each failure, and that a set-up machine needs nothing more."""
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, load_script

SCRIPT = os.path.join(REPO, "tools", "install.py")
SHARED_DETECTRON2 = os.path.join(REPO, "..", "shared", "detectron2")
CPU_TORCH = {"torch": "2.14.1", "cuda": None, "gpus": 0, "torchvision": "0.29.1"}


@pytest.fixture(scope="module")
def install():
    return load_script("tools/install.py", "install_script")


@pytest.fixture
def env(install):
    return install.ENV  # involution_d2/environment.py, as the set-up loads it


def test_default_source_is_the_official_repository_at_the_pinned_commit(env):
    assert env.resolve_source(None) == (
        "git", "https://github.com/facebookresearch/detectron2.git", env.DETECTRON2_COMMIT)
    assert re.fullmatch(r"[0-9a-f]{40}", env.DETECTRON2_COMMIT)


def test_local_copies_are_recognised_by_kind(env, tmp_path):
    folder = tmp_path / "detectron2"
    folder.mkdir()
    (folder / "setup.py").write_text("")
    wheel = tmp_path / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    archive = tmp_path / "detectron2-src-0123456789ab.tar.gz"
    wheel.write_bytes(b"")
    archive.write_bytes(b"")
    assert env.resolve_source(str(folder))[0] == "folder"
    assert env.resolve_source(str(wheel))[0] == "wheel"
    resolved = env.resolve_source(str(archive))
    assert resolved[0] == "archive"
    assert env.source_folder(resolved, "/cache") == (
        "/cache/detectron2-src/detectron2-src-0123456789ab")
    assert env.resolve_source("git+https://example.org/detectron2.git@abc123") == (
        "git", "https://example.org/detectron2.git", "abc123")


def _text_file(folder):
    (folder / "notes.txt").write_text("")
    return folder / "notes.txt"


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "absent", "no such file or folder"),
    (lambda p: p, "has no setup.py"),
    (_text_file, "neither a folder, a wheel"),
])
def test_a_bad_source_is_one_line_naming_it(env, tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(env.SetupError, match=expected) as error:
        env.resolve_source(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_an_archive_that_is_not_detectron2_is_refused(env, tmp_path):
    archive = tmp_path / "other.tar.gz"
    import tarfile

    with tarfile.open(archive, "w:gz") as tar:
        notes = tmp_path / "README"
        notes.write_text("not Detectron2")
        tar.add(notes, arcname="other/README")
    with pytest.raises(env.SetupError, match="holds no setup.py"):
        env.prepare(env.resolve_source(str(archive)), str(tmp_path / "cache"))
    assert not os.listdir(tmp_path / "cache" / "detectron2-src")  # nothing half-made is left


def test_an_unsupported_python_is_named(install):
    with pytest.raises(install.SetupError, match=r"Python 3\.9 is not supported: torch "):
        install.python_check((3, 9))
    install.python_check((3, 11))


def test_no_git_and_no_network_each_give_one_line(env, tmp_path, monkeypatch):
    source = ("git", "https://127.0.0.1:9/detectron2.git", "0" * 40)
    with pytest.raises(env.SetupError, match="no network: git could not fetch .*127.0.0.1"
                       ".* point --detectron2"):
        env.prepare(source, str(tmp_path))  # port 9 on the loopback: refused at once
    monkeypatch.setattr(env.shutil, "which", lambda name: None)
    with pytest.raises(env.SetupError, match="git is not installed"):
        env.prepare(source, str(tmp_path))


def test_no_compiler_is_said_before_anything_is_changed(install, tmp_path, monkeypatch):
    folder = tmp_path / "detectron2"
    folder.mkdir()
    (folder / "setup.py").write_text("")
    monkeypatch.setattr(install, "installed_version", lambda name: None)
    monkeypatch.setattr(install.shutil, "which", lambda name: None)
    monkeypatch.setattr(install, "pip", lambda *a, **k: pytest.fail("pip ran"))
    with pytest.raises(install.SetupError, match=r"no C\+\+ compiler: .* wheel built for torch"):
        install.step_detectron2(("folder", str(folder)), explicit=True, check=False,
                                cache=str(tmp_path))


def test_a_detectron2_built_against_another_torch_is_rebuilt(install, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.setattr(install, "installed_version", lambda name: "0.6")
    monkeypatch.setattr(install, "installed_from", lambda name: (None, False))
    monkeypatch.setattr(install, "torch_info", lambda: (CPU_TORCH, None))
    monkeypatch.setattr(install, "detectron2_loads", lambda: (
        False, "ImportError: detectron2/_C.so: undefined symbol: _ZN3c105ErrorC2E"))
    message, changed = install.step_detectron2(install.ENV.resolve_source(None), explicit=False,
                                               check=True, cache=str(tmp_path))
    assert changed and "would install from " in message
    said = capsys.readouterr().out
    assert "does not load with torch 2.14.1 (CPU build) (ImportError: " in said and "undefined symbol" in said
    assert "would reinstall" in said


def test_a_working_detectron2_is_kept_unless_another_source_is_asked_for(install, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(install, "installed_version", lambda name: "0.6")
    monkeypatch.setattr(install, "installed_from", lambda name: ("/src/detectron2", False))
    monkeypatch.setattr(install, "torch_info", lambda: (CPU_TORCH, None))
    monkeypatch.setattr(install, "detectron2_loads", lambda: (True, "Detectron2 loads"))
    kept, changed = install.step_detectron2(install.ENV.resolve_source(None), explicit=False,
                                            check=True, cache=str(tmp_path))
    assert not changed and kept.endswith("from /src/detectron2: loads with torch 2.14.1 (CPU "
                                         "build)")
    wheel = tmp_path / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"")
    _, changed = install.step_detectron2(install.ENV.resolve_source(str(wheel)), explicit=True,
                                         check=True, cache=str(tmp_path))
    assert changed


# ---------------------------------------------------------------------------------------------
# torch and the CUDA kernels, on stand-in distributions of torch and torchvision that the
# set-up's probe (a fresh interpreter) finds first on PYTHONPATH


def stand_in(folder, torch="2.11.0+cu130", cuda="13.0", gpus=1, torchvision="0.26.0",
             broken=None):
    """A torch (and a torchvision, unless None) that answer what the probe asks; ``broken``:
    the error that importing torch raises instead."""
    folder.mkdir(exist_ok=True)
    for name, version in (("torch", torch), ("torchvision", torchvision)):
        if version is None:
            continue
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text(broken and f"raise {broken}\n" or (
        f"__version__ = {torch!r}\n"
        f"class version:\n    cuda = {cuda!r}\n"
        f"class cuda:\n    is_available = staticmethod(lambda: {gpus} > 0)\n"
        f"    device_count = staticmethod(lambda: {gpus})\n"
        "zeros = ones = lambda *shape: None\n"))
    if torchvision is not None:
        (folder / "torchvision").mkdir()
        (folder / "torchvision" / "__init__.py").write_text(
            f"__version__ = {torchvision!r}\nfrom . import ops\n")
        (folder / "torchvision" / "ops.py").write_text("def nms(*args):\n    return []\n")
    return str(folder)


@pytest.fixture
def machine(install, tmp_path, monkeypatch):
    """Runs the set-up's steps against stand-ins: ``machine.use(**stand_in)`` makes them what
    the probe finds; pip only records its arguments (and may swap the stand-ins, as an install
    would); distributions count as installed as ``versions`` says."""
    class Machine:
        pips, versions, after_pip = [], {"setuptools": "80.9.0"}, None

        def use(self, **kwargs):
            folder = tmp_path / f"site{len(os.listdir(tmp_path))}"
            monkeypatch.setenv("PYTHONPATH", stand_in(folder, **kwargs))
            install._PROBED.clear()

    machine = Machine()

    def pip(args, *rest):
        machine.pips.append(args)
        if machine.after_pip:
            machine.use(**machine.after_pip)

    monkeypatch.setattr(install, "pip", pip)
    monkeypatch.setattr(install, "installed_version", lambda name: machine.versions.get(name))
    install._PROBED.clear()
    yield machine
    install._PROBED.clear()


def test_an_installed_supported_torch_is_kept(install, machine):
    """A GPU user's CUDA build of torch, with its torchvision: nothing is replaced."""
    machine.use(torch="2.11.0+cu130", cuda="13.0", gpus=1, torchvision="0.26.0")
    machine.versions.update(torch="2.11.0+cu130", torchvision="0.26.0")
    message, changed = install.step_torch(None, check=False, cache="/unused")
    assert (message, changed) == ("torch 2.11.0+cu130 (CUDA 13.0, 1 GPU) + torchvision "
                                  "0.26.0: kept", False)
    assert machine.pips == []


@pytest.mark.parametrize("state, version, uninstalls", [
    ("ModuleNotFoundError(\"No module named 'torch'\")", None, False),
    ("OSError('libtorch_cpu.so: cannot open shared object file')", "2.14.1", True),
])
def test_a_missing_or_broken_torch_gets_the_pinned_pair(install, machine, state, version,
                                                        uninstalls):
    machine.use(broken=state)
    machine.versions["torch"] = version
    machine.after_pip = dict(torch="2.14.1", cuda=None, gpus=0, torchvision="0.29.1")
    message, changed = install.step_torch(None, check=False, cache="/unused")
    assert changed and message == ("torch 2.14.1 (CPU build) + torchvision 0.29.1: "
                                   "installed now")
    pair = ["install", "torch==2.14.1", "torchvision==0.29.1"]
    uninstall = ["uninstall", "-y", "torch", "torchvision"]
    assert machine.pips == ([uninstall, pair] if uninstalls else [pair])


def test_a_kept_torch_gets_its_own_torchvision_and_another_release_only_when_asked(
        install, machine):
    machine.use(torch="2.11.0+cu130", torchvision=None)
    machine.versions["torch"] = "2.11.0+cu130"
    message, changed = install.step_torch(None, check=True, cache="/unused")
    assert changed and message == ("no working torchvision beside torch 2.11.0+cu130: would "
                                   "install torch==2.11.0+cu130 + torchvision==0.26.*")
    machine.use(torch="2.11.0+cu130", torchvision="0.26.0")
    message, _ = install.step_torch("2.14.1", check=True, cache="/unused")
    assert message == ("torch 2.14.1 was asked for: would install torch==2.14.1 + "
                       "torchvision==0.29.1")
    assert machine.pips == []


def test_a_torch_too_old_is_one_line_naming_it_and_the_fix(install, machine):
    machine.use(torch="2.1.2+cu118", cuda="11.8", torchvision="0.16.2")
    with pytest.raises(install.SetupError, match=r"torch 2\.1\.2\+cu118 is older than 2\.4.*"
                       r"--torch 2\.14\.1"):
        install.step_torch(None, check=False, cache="/unused")


@pytest.mark.parametrize("cuda, wheel", [("12.6", "cupy-cuda12x>=13"),
                                         ("13.0", "cupy-cuda13x>=13.6")])
def test_the_cupy_wheel_follows_torchs_cuda(install, machine, monkeypatch, cuda, wheel):
    machine.use(torch=f"2.11.0+cu{cuda.replace('.', '')}", cuda=cuda, gpus=1)
    message, changed = install.step_cuda(check=True, cache="/unused")
    assert changed and message == (f"CUDA kernels: would install {wheel} (torch has CUDA "
                                   f"{cuda})")
    other = "cupy-cuda13x" if cuda.startswith("12") else "cupy-cuda12x"
    machine.versions[other] = "13.6.0"  # a wheel for the other CUDA runs no kernel: replaced
    answers = iter([(False, "CUDARuntimeError: cudaErrorInsufficientDriver", ""),
                    (True, "CuPy ran an involution kernel", "")])
    monkeypatch.setattr(install, "probe", lambda what: next(answers))
    message, changed = install.step_cuda(check=False, cache="/unused")
    assert changed and message == "CUDA kernels: CuPy ran an involution kernel"
    assert machine.pips == [["uninstall", "-y", other], ["install", wheel]]


def test_a_cupy_that_runs_the_kernel_is_kept(install, machine, monkeypatch):
    machine.use(torch="2.11.0+cu130", cuda="13.0", gpus=1)
    machine.versions["cupy"] = "14.0.0"  # built from source: whatever its name, it works
    install.torch_info()  # the stand-in's answer, before the kernel check is stubbed
    monkeypatch.setattr(install, "probe", lambda what: (True, "CuPy 14.0.0 ran an involution "
                                                        "kernel on NVIDIA H200 (0.1 s)", ""))
    message, changed = install.step_cuda(check=False, cache="/unused")
    assert not changed and message.startswith("CUDA kernels: CuPy 14.0.0 ran an involution")
    assert machine.pips == []


def test_without_a_gpu_the_cuda_kernels_are_one_line_saying_how_to_add_them(install, machine):
    machine.use(torch="2.14.1", cuda=None, gpus=0, torchvision="0.29.1")
    message, changed = install.step_cuda(check=False, cache="/unused")
    assert not changed and message == (
        "CUDA kernels: not set up (torch 2.14.1 is a CPU build); to add them, rerun python3 "
        "tools/install.py where torch has CUDA and sees a GPU")
    machine.use(torch="2.11.0+cu130", cuda="13.0", gpus=0)
    message, _ = install.step_cuda(check=False, cache="/unused")
    assert "(torch 2.11.0+cu130 has CUDA 13.0 but sees no GPU)" in message
    assert machine.pips == []


def test_a_package_not_installed_from_this_clone_is_installed(install, monkeypatch):
    monkeypatch.setattr(install, "installed_from", lambda name: (None, False))
    message, changed = install.step_package(check=True, cache="/unused")
    assert changed and message == (f"involution-d2: would install (editable, [test]): not "
                                   f"installed editable from {install.ROOT}")


def test_versions_come_from_one_place(env):
    assert env.torchvision_for("2.14.1") == f"torchvision=={env.PINNED_TORCHVISION}"
    assert env.torchvision_for("2.11.0+cu130") == "torchvision==0.26.*"
    assert env.torch_is_supported("2.4.0") and not env.torch_is_supported("2.3.1+cu121")
    with pytest.raises(ValueError, match="CUDA 11.8, for which .* have no CuPy wheel"):
        env.cupy_requirement("11.8")


def test_a_set_up_machine_needs_nothing(tmp_path):
    """What CI and a second run of README's first command find: every step done."""
    env = {k: v for k, v in os.environ.items() if k != "INVOLUTION_D2_DETECTRON2"}
    done = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line[:5] for line in lines[:4]] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"], done.stdout
    assert "would" not in done.stdout and lines[-1] == "everything is installed"


def test_a_second_run_changes_nothing():
    """README's first command, run again: every step is kept, nothing is installed."""
    env = {k: v for k, v in os.environ.items() if k != "INVOLUTION_D2_DETECTRON2"}
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith(": nothing to change"), done.stdout
    assert "installing" not in done.stdout and "building" not in done.stdout


def test_the_offline_copy_is_the_pinned_commit(install):
    if not os.path.isdir(SHARED_DETECTRON2):
        pytest.skip("no offline copy of Detectron2 beside the project")
    archives = [n for n in os.listdir(SHARED_DETECTRON2) if n.startswith("detectron2-src-")]
    assert archives == [f"detectron2-src-{install.ENV.DETECTRON2_COMMIT[:12]}.tar.gz"]


def test_ci_runs_the_readme_commands():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    quick_start = readme[readme.index("## Quick start"):readme.index("## Install")]
    commands = [line for line in quick_start.splitlines() if line.startswith("python3 ")]
    assert commands[0].startswith("python3 tools/install.py && python3 train_net.py ")
    assert commands[1] == "python3 -m pytest tests"
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = f.read()
    assert 'python3 tools/install.py --detectron2 "${archives[0]}"' in ci
    assert "\npython3 -m pytest tests\n" in ci and "export CI=true" in ci
