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


@pytest.fixture(scope="module")
def install():
    return load_script("tools/install.py", "install_script")


def test_default_source_is_the_official_repository_at_the_pinned_commit(install):
    source = install.resolve_source(None)
    assert (source.kind, source.location, source.revision) == (
        "git", "https://github.com/facebookresearch/detectron2.git", install.DETECTRON2_COMMIT)
    assert re.fullmatch(r"[0-9a-f]{40}", install.DETECTRON2_COMMIT)


def test_local_copies_are_recognised_by_kind(install, tmp_path):
    folder = tmp_path / "detectron2"
    folder.mkdir()
    (folder / "setup.py").write_text("")
    wheel = tmp_path / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    archive = tmp_path / "detectron2-src-0123456789ab.tar.gz"
    wheel.write_bytes(b"")
    archive.write_bytes(b"")
    assert install.resolve_source(str(folder)).kind == "folder"
    assert install.resolve_source(str(wheel)).kind == "wheel"
    resolved = install.resolve_source(str(archive))
    assert resolved.kind == "archive"
    assert resolved.folder("/cache") == "/cache/detectron2-src/detectron2-src-0123456789ab"
    git = install.resolve_source("git+https://example.org/detectron2.git@abc123")
    assert (git.kind, git.location, git.revision) == (
        "git", "https://example.org/detectron2.git", "abc123")


def _text_file(folder):
    (folder / "notes.txt").write_text("")
    return folder / "notes.txt"


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "absent", "no such file or folder"),
    (lambda p: p, "has no setup.py"),
    (_text_file, "neither a folder, a wheel"),
])
def test_a_bad_source_is_one_line_naming_it(install, tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(install.SetupError, match=expected) as error:
        install.resolve_source(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_an_archive_that_is_not_detectron2_is_refused(install, tmp_path):
    archive = tmp_path / "other.tar.gz"
    import tarfile

    with tarfile.open(archive, "w:gz") as tar:
        notes = tmp_path / "README"
        notes.write_text("not Detectron2")
        tar.add(notes, arcname="other/README")
    with pytest.raises(install.SetupError, match="holds no setup.py"):
        install.prepare(install.resolve_source(str(archive)), str(tmp_path / "cache"))
    assert not os.listdir(tmp_path / "cache" / "detectron2-src")  # nothing half-made is left


def test_an_unsupported_python_is_named(install):
    with pytest.raises(install.SetupError, match=r"Python 3\.9 is not supported: torch "):
        install.python_check((3, 9))
    install.python_check((3, 11))


def test_no_git_and_no_network_each_give_one_line(install, tmp_path, monkeypatch):
    source = install.Source("git", "https://127.0.0.1:9/detectron2.git", "0" * 40)
    with pytest.raises(install.SetupError, match="no network: git could not fetch .*127.0.0.1"
                       ".* point --detectron2"):
        install.prepare(source, str(tmp_path))  # port 9 on the loopback: refused at once
    monkeypatch.setattr(install.shutil, "which", lambda name: None)
    with pytest.raises(install.SetupError, match="git is not installed"):
        install.prepare(source, str(tmp_path))


def test_no_compiler_is_said_before_anything_is_changed(install, tmp_path, monkeypatch):
    folder = tmp_path / "detectron2"
    folder.mkdir()
    (folder / "setup.py").write_text("")
    monkeypatch.setattr(install, "compiler", lambda: None)
    monkeypatch.setattr(install, "pip", lambda *a, **k: pytest.fail("pip ran"))
    with pytest.raises(install.SetupError, match=r"no C\+\+ compiler: .* wheel built for torch"):
        install.step_detectron2(install.Source("folder", str(folder)), explicit=True,
                                check=False, cache=str(tmp_path))


def test_a_detectron2_built_against_another_torch_is_rebuilt(install, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.setattr(install, "installed_version", lambda name: "0.6")
    monkeypatch.setattr(install, "installed_from", lambda name: (None, False))
    monkeypatch.setattr(install, "detectron2_loads", lambda: (
        False, "ImportError: detectron2/_C.so: undefined symbol: _ZN3c105ErrorC2E"))
    message, changed = install.step_detectron2(install.resolve_source(None), explicit=False,
                                               check=True, cache=str(tmp_path))
    assert changed and "would install from https://github.com" in message
    said = capsys.readouterr().out
    assert "does not load with torch 0.6 (ImportError: " in said and "undefined symbol" in said
    assert "would reinstall" in said


def test_a_working_detectron2_is_kept_unless_another_source_is_asked_for(install, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(install, "installed_version", lambda name: "0.6")
    monkeypatch.setattr(install, "installed_from", lambda name: ("file:///src/detectron2", False))
    monkeypatch.setattr(install, "detectron2_loads", lambda: (True, ""))
    kept, changed = install.step_detectron2(install.resolve_source(None), explicit=False,
                                            check=True, cache=str(tmp_path))
    assert not changed and "loads with this torch" in kept
    wheel = tmp_path / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"")
    _, changed = install.step_detectron2(install.resolve_source(str(wheel)), explicit=True,
                                         check=True, cache=str(tmp_path))
    assert changed


def test_a_set_up_machine_needs_nothing(tmp_path):
    """What CI and a second run of README's first command find: every step done."""
    env = {k: v for k, v in os.environ.items() if k != "INVOLUTION_D2_DETECTRON2"}
    done = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line[:5] for line in lines[:3]] == ["[1/3]", "[2/3]", "[3/3]"], done.stdout
    assert "would" not in done.stdout and lines[-1] == "everything is installed"


def test_the_offline_copy_is_the_pinned_commit(install):
    if not os.path.isdir(SHARED_DETECTRON2):
        pytest.skip("no offline copy of Detectron2 beside the project")
    archives = [n for n in os.listdir(SHARED_DETECTRON2) if n.startswith("detectron2-src-")]
    assert archives == [f"detectron2-src-{install.DETECTRON2_COMMIT[:12]}.tar.gz"]


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
