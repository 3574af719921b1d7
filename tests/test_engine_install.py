"""Install Engine's logic without Blender: the commands per platform, the stamp, the swap, failures, removal."""
import json
import sys
import time
from pathlib import Path

import pytest

from blender_addon import engine_install
from blender_addon.engine_install import InstallFailed, Installer, InstallJob, Step


@pytest.fixture
def wheel_dir(tmp_path):
    folder = tmp_path / "engine_wheel"
    folder.mkdir()
    (folder / "splat_restore-0.1.0-py3-none-any.whl").write_bytes(b"wheel v1")
    (folder / "pins.json").write_text(json.dumps({"torch": "torch==2.13.0", "mediapipe": "mediapipe==0.10.21"}))
    (folder / "constraints.txt").write_text("diffusers==0.42.1\n")
    return folder


PROBE = {"engine": "0.1.0", "torch": "2.13.0+cu128", "cuda_build": "12.8", "cuda": True, "cuda_error": "",
         "devices": [{"id": "cpu", "name": "CPU"}, {"id": "cuda:0", "name": "NVIDIA RTX 4090"}]}


@pytest.fixture
def fake_pip(monkeypatch):
    """Real venvs (without pip, so they take milliseconds) and steps that print like pip; `fail` makes one fail."""
    monkeypatch.setattr(engine_install, "VENV", ("-m", "venv", "--without-pip"))
    monkeypatch.setattr(engine_install, "PROBE", f"print({json.dumps(json.dumps(PROBE))})")
    steps = {"fail": False}

    def fake_steps(wheel, pins, constraints, platform=sys.platform):
        code = "import sys; print('Collecting torch'); print('ERROR: No space left on device'); sys.exit(1)" \
            if steps["fail"] else "print('Successfully installed torch')"
        return [Step("Installing PyTorch", ("-c", code))]

    monkeypatch.setattr(engine_install, "install_steps", fake_steps)
    monkeypatch.delenv(engine_install.TORCH_ENV, raising=False)
    return steps


def installer(home, wheel_dir, seen=None):
    seen = [] if seen is None else seen
    return Installer(home, wheel_dir, sys.executable, lambda phase, line: seen.append((phase, line)))


def test_windows_takes_torch_from_pytorchs_cuda_index_and_the_others_from_pypi(tmp_path):
    pins = {"torch": "torch==2.13.0", "mediapipe": "mediapipe==0.10.21"}
    wheel = tmp_path / "splat_restore-0.1.0-py3-none-any.whl"
    win = engine_install.install_steps(wheel, pins, tmp_path / "constraints.txt", "win32")
    assert win[0].args[-3:] == ("--index-url", "https://download.pytorch.org/whl/cu128", "torch==2.13.0")
    for platform in ("linux", "darwin"):
        assert "--index-url" not in engine_install.install_steps(wheel, pins, tmp_path / "c.txt", platform)[0].args
    engine, mediapipe = win[1].args, win[2].args
    assert "torch==2.13.0" in engine and engine[-1] == f"{wheel}[faces]" and "--index-url" not in engine
    assert mediapipe[-2:] == ("--no-deps", "mediapipe==0.10.21")


@pytest.mark.parametrize("platform", ["win32", "linux", "darwin"])
def test_every_pip_step_keeps_to_the_constraints_the_tests_ran_with(tmp_path, platform):
    constraints = tmp_path / "engine_wheel" / "constraints.txt"
    steps = engine_install.install_steps(tmp_path / "e.whl", {"torch": "torch", "mediapipe": "mediapipe"},
                                         constraints, platform)
    for step in steps:
        at = step.args.index("--constraint")
        assert step.args[at + 1] == str(constraints), step.phase


def test_new_constraints_make_the_installed_engine_out_of_date(tmp_path, wheel_dir, fake_pip):
    home = tmp_path / "home"
    installer(home, wheel_dir).install()
    (wheel_dir / "constraints.txt").write_text("diffusers==0.43.0\n")
    assert installer(home, wheel_dir).up_to_date() is False


def test_an_add_on_zip_without_constraints_is_refused(tmp_path, wheel_dir, fake_pip):
    (wheel_dir / "constraints.txt").unlink()
    with pytest.raises(InstallFailed, match="no constraints.txt in .*python build.py addon"):
        installer(tmp_path / "home", wheel_dir).install()


def test_the_torch_requirement_can_be_overridden(wheel_dir, monkeypatch):
    monkeypatch.setenv(engine_install.TORCH_ENV, "torch==2.13.0+cpu")
    assert engine_install.read_pins(wheel_dir)["torch"] == "torch==2.13.0+cpu"


def test_a_python_the_engine_cannot_use_is_refused_with_what_to_install():
    assert engine_install.judge_python("/b/python3.11", (3, 11), True) == ""
    too_new = engine_install.judge_python("/b/python3.13", (3, 13), True)
    assert "/b/python3.13 is Python 3.13" in too_new and "Python for Install" in too_new and "3.12" in too_new
    assert "cannot make virtual environments" in engine_install.judge_python("/b/py", (3, 11), False)


def test_an_interpreter_that_cannot_run_is_named(tmp_path, wheel_dir, fake_pip):
    with pytest.raises(InstallFailed, match="cannot run .*nope"):
        Installer(tmp_path / "home", wheel_dir, str(tmp_path / "nope")).install()


def test_the_status_line_names_versions_gpu_and_whether_cuda_works():
    assert engine_install.describe(PROBE) == \
        "Engine 0.1.0, torch 2.13.0+cu128, cuda:0 NVIDIA RTX 4090; CUDA works"
    cpu = {**PROBE, "torch": "2.13.0+cpu", "cuda_build": None, "cuda": False, "devices": PROBE["devices"][:1]}
    assert engine_install.describe(cpu) == "Engine 0.1.0, torch 2.13.0+cpu, CPU only; no CUDA in this torch build"
    broken = {**PROBE, "cuda": False, "cuda_error": "no kernel image is available"}
    assert engine_install.describe(broken).endswith("CUDA fails: no kernel image is available")


def test_install_makes_the_live_engine_and_reports_progress(tmp_path, wheel_dir, fake_pip):
    home, seen = tmp_path / "home", []
    assert installer(home, wheel_dir, seen).install() is True
    python = Path(engine_install.engine_python(home))
    assert python.is_file() and python.parent.parent.parent == home / "envs"
    assert engine_install.installed(home)["probe"] == PROBE
    assert ("Installing PyTorch", "Successfully installed torch") in seen
    assert "Successfully installed torch" in (home / "install.log").read_text()


def test_a_second_install_is_a_no_op(tmp_path, wheel_dir, fake_pip):
    home = tmp_path / "home"
    installer(home, wheel_dir).install()
    python, log = engine_install.engine_python(home), (home / "install.log").stat().st_mtime_ns
    started = time.perf_counter()
    assert installer(home, wheel_dir).install() is False
    assert time.perf_counter() - started < 0.5
    assert engine_install.engine_python(home) == python and (home / "install.log").stat().st_mtime_ns == log


def test_a_new_wheel_installs_a_new_venv_and_drops_the_old_one(tmp_path, wheel_dir, fake_pip):
    home = tmp_path / "home"
    installer(home, wheel_dir).install()
    old = engine_install.live_venv(home)
    (wheel_dir / "splat_restore-0.1.0-py3-none-any.whl").write_bytes(b"wheel v2")
    assert installer(home, wheel_dir).up_to_date() is False
    swapped = []
    assert installer(home, wheel_dir).install(before_swap=lambda: swapped.append(1)) is True
    assert swapped and engine_install.live_venv(home) != old and not old.exists()


def test_a_failed_install_keeps_the_previous_engine_and_shows_pips_error(tmp_path, wheel_dir, fake_pip):
    home = tmp_path / "home"
    installer(home, wheel_dir).install()
    python = engine_install.engine_python(home)
    (wheel_dir / "splat_restore-0.1.0-py3-none-any.whl").write_bytes(b"wheel v2")
    fake_pip["fail"] = True
    with pytest.raises(InstallFailed) as e:
        installer(home, wheel_dir).install()
    assert "Installing PyTorch failed (exit code 1); the previous engine is unchanged" in str(e.value)
    assert "No space left on device" in e.value.tail and str(home / "install.log") in str(e.value)
    assert engine_install.engine_python(home) == python and Path(python).is_file()
    assert [p.name for p in (home / "envs").iterdir()] == [Path(python).parent.parent.name]  # staging gone
    assert "No space left on device" in (home / "install.log").read_text()


REAL_PROBE = engine_install.PROBE


def _pip_leaves_in_the_new_venv(monkeypatch, files: dict) -> None:
    """pip's steps succeed and leave `files` (path in site-packages -> text) in the new venv."""
    code = ("import pathlib, sysconfig\n"
            f"for name, text in {files!r}.items():\n"
            "    path = pathlib.Path(sysconfig.get_paths()['purelib']) / name\n"
            "    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(text)\n"
            "print('Successfully installed torch splat-restore')")
    monkeypatch.setattr(engine_install, "install_steps", lambda *a, **kw: [Step("Installing PyTorch", ("-c", code))])


def _live_engine(home) -> dict:
    """What the engine in use is: its pointer, its record, the venvs present, its interpreter."""
    venv = engine_install.live_venv(home)
    return {"current": (home / "current").read_text(), "installed": (venv / engine_install.INSTALLED).read_bytes(),
            "envs": sorted(p.name for p in (home / "envs").iterdir()), "python": engine_install.engine_python(home)}


def _a_live_engine_and_a_newer_wheel(home, wheel_dir) -> dict:
    """An installed engine, and the add-on updated since (a new wheel); the live engine, to compare after."""
    installer(home, wheel_dir).install()
    (wheel_dir / "splat_restore-0.1.0-py3-none-any.whl").write_bytes(b"wheel v2")
    return _live_engine(home)


def test_a_new_engine_whose_import_fails_its_probe_is_not_switched_to(tmp_path, wheel_dir, fake_pip, monkeypatch):
    home = tmp_path / "home"
    before = _a_live_engine_and_a_newer_wheel(home, wheel_dir)
    _pip_leaves_in_the_new_venv(monkeypatch, {
        "torch.py": "__version__ = '2.13.0'\n",
        "engine/__init__.py": "raise ImportError('libcudart.so.12: cannot open shared object file')\n"})
    monkeypatch.setattr(engine_install, "PROBE", REAL_PROBE)  # the add-on's own probe, run by the new venv
    swapped = []
    with pytest.raises(InstallFailed) as e:
        installer(home, wheel_dir).install(before_swap=lambda: swapped.append(1))
    assert "Checking the engine failed (exit code 1); the previous engine is unchanged" in str(e.value)
    assert "ImportError: libcudart.so.12: cannot open shared object file" in e.value.tail
    assert _live_engine(home) == before and Path(before["python"]).is_file()
    assert not swapped  # the engine running from the old venv was not even stopped


def test_a_new_engine_whose_probe_prints_no_description_is_not_switched_to(tmp_path, wheel_dir, fake_pip,
                                                                          monkeypatch):
    home = tmp_path / "home"
    before = _a_live_engine_and_a_newer_wheel(home, wheel_dir)
    monkeypatch.setattr(engine_install, "PROBE", "print('Illegal instruction (core dumped)')")  # and exits 0
    swapped = []
    with pytest.raises(InstallFailed) as e:
        installer(home, wheel_dir).install(before_swap=lambda: swapped.append(1))
    assert "the new engine did not describe itself; the previous engine is unchanged" in str(e.value)
    assert "Illegal instruction" in e.value.tail
    assert _live_engine(home) == before and not swapped


def test_a_full_disk_at_the_switch_keeps_the_previous_engine(tmp_path, wheel_dir, fake_pip, monkeypatch):
    home = tmp_path / "home"
    installer(home, wheel_dir).install()
    python = engine_install.engine_python(home)
    (wheel_dir / "splat_restore-0.1.0-py3-none-any.whl").write_bytes(b"wheel v2")

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine_install.os, "replace", full)
    with pytest.raises(InstallFailed, match="No space left on device"):
        installer(home, wheel_dir).install()
    assert engine_install.engine_python(home) == python and len(list((home / "envs").iterdir())) == 1


def test_an_add_on_without_the_wheel_says_how_to_build_it(tmp_path):
    with pytest.raises(InstallFailed, match="python build.py addon"):
        Installer(tmp_path, tmp_path, sys.executable).install()


def test_the_job_reports_the_error_instead_of_raising(tmp_path, wheel_dir, fake_pip):
    fake_pip["fail"] = True
    job = InstallJob(installer(tmp_path / "home", wheel_dir))
    job.start()
    job.thread.join(30)
    assert job.done and isinstance(job.error, InstallFailed) and job.phase == "Installing PyTorch"


def test_remove_forgets_the_engine(tmp_path, wheel_dir, fake_pip):
    home = tmp_path / "home"
    installer(home, wheel_dir).install()
    engine_install.remove(home)
    assert engine_install.engine_python(home) == "" and not (home / "envs").exists()


def test_the_installed_engine_is_the_default_but_the_environment_variable_wins(monkeypatch):
    from blender_addon.engine_manager import default_engine_python

    monkeypatch.delenv("SPLAT_RESTORE_ENGINE_PYTHON", raising=False)
    assert default_engine_python("/home/u/engine/bin/python") == "/home/u/engine/bin/python"
    monkeypatch.setenv("SPLAT_RESTORE_ENGINE_PYTHON", "/farm/python")
    assert default_engine_python("/home/u/engine/bin/python") == "/farm/python"
