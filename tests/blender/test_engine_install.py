"""Install Engine in real Blender, from the built extension zip: one real install per session (torch and the engine's
dependencies from the registries CI reaches, torch pinned to the CPU wheel CI has), then everything else is read from
what that Blender process recorded (engine_install_check.py)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import bpy
import numpy as np
import pytest
from conftest import ROOT, engine_restore
from scene import pixels

from blender_addon.engine_install import PROBE as REAL_PROBE  # before a fixture cans it

TORCH_PIN = "torch==2.13.0"


@pytest.fixture(autouse=True)
def online_access():
    """Install Engine runs pip only when Blender's online access is on."""
    bpy.context.preferences.system.use_online_access = True
    yield
    bpy.context.preferences.system.use_online_access = False


@pytest.fixture(scope="session")
def installed(tiny_weights, tmp_path_factory):
    work = tmp_path_factory.mktemp("install_engine")
    r = subprocess.run([sys.executable, str(ROOT / "build.py"), "addon"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    zip_path = r.stdout.strip().splitlines()[-1]
    env = {k: v for k, v in os.environ.items() if k != "SPLAT_RESTORE_ENGINE_PYTHON"}  # the installed one, please
    env.update(BLENDER_USER_RESOURCES=str(work / "user"), SPLAT_RESTORE_TORCH=TORCH_PIN)
    report = work / "report.json"
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("engine_install_check.py")), zip_path,
                        str(tiny_weights), str(work), str(report)], capture_output=True, text=True, timeout=1800,
                       env=env, cwd=work)
    assert report.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(report.read_text())
    print(f"install {out['install_s']:.0f} s, second install {out.get('again_s', -1):.2f} s")
    return {**out, "work": work, "stdout": r.stdout, "stderr": r.stderr[-3000:]}


def test_install_engine_makes_a_venv_in_the_extensions_user_folder(installed):
    assert installed["install"] == ["FINISHED"], installed["install_error"] + installed["stderr"]
    home = Path(installed["home"])
    assert home == installed["work"] / "user" / "extensions" / ".user" / "user_default" / "splat_restore"
    assert Path(installed["python"]).is_relative_to(home / "envs")
    assert "Splat Restore: Installing PyTorch (torch==2.13.0)" in installed["stdout"]  # background mode prints


def test_the_status_line_names_engine_torch_device_and_cuda(installed):
    assert installed["status"] == "Engine 0.1.0, torch 2.13.0+cpu, CPU only; no CUDA in this torch build"


def test_engine_python_defaults_to_the_installed_engine_and_an_explicit_path_wins(installed):
    assert installed["default_python"] == installed["python"]
    assert installed["explicit_python"] == str(installed["work"] / "explicit" / "python")


def test_the_installed_engine_restores_a_render(installed, tiny_weights, tmp_path):
    assert installed["restore"] == ["FINISHED"], installed["restore_error"]
    expected = engine_restore(installed["work"] / "render.png", tmp_path, tiny_weights)
    assert np.abs(pixels(installed["work"] / "restored.png") - pixels(expected)).max() < 1e-6


def test_a_second_install_is_a_fast_no_op(installed):
    assert installed["again"] == ["FINISHED"] and installed["again_s"] < 5
    assert installed["log_kept"]


def test_a_failed_install_keeps_the_previous_engine_and_shows_pips_error(installed):
    assert installed["failed"] == ["CANCELLED"]
    assert "Installing PyTorch (torch==0.0.1) failed" in installed["failed_error"]
    assert re.search(r"\nERROR: .*torch==0\.0\.1", installed["failed_error"])  # pip's own words, its tail
    assert "install.log" in installed["failed_error"] and "torch==0.0.1" in installed["failed_log"]
    assert installed["python_after_failure"] == installed["python"]
    assert installed["envs_after_failure"] == [Path(installed["python"]).parents[1].name]
    assert installed["restore_after_failure"] == ["FINISHED"], installed["restore_after_failure_error"]


def test_remove_engine_deletes_it(installed):
    assert installed["remove"] == ["FINISHED"], installed["remove_error"]
    assert installed["python_after_remove"] == "" and not installed["envs_left"]
    assert installed["default_after_remove"] != installed["python"]


def stand_in_wheels(tmp_path):
    """An engine_wheel/ folder as the add-on zip carries it (a placeholder wheel, the pins, the constraints)."""
    wheels = tmp_path / "engine_wheel"
    wheels.mkdir()
    (wheels / "splat_restore-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (wheels / "pins.json").write_text(json.dumps({"torch": TORCH_PIN, "mediapipe": "mediapipe==0.10.21"}))
    (wheels / "constraints.txt").write_text("diffusers==0.42.1\n")
    return wheels


def test_python_for_install_is_the_interpreter_the_venv_is_made_with(addon, tmp_path, monkeypatch):
    from blender_addon import engine_setup

    monkeypatch.setattr(engine_setup, "WHEEL_DIR", stand_in_wheels(tmp_path))
    addon.install_python = str(tmp_path / "python3.12")
    try:
        with pytest.raises(RuntimeError, match=r"cannot run .*python3\.12"):
            bpy.ops.splat_restore.install_engine(target=str(tmp_path / "home"))
    finally:
        addon.install_python = ""
    assert engine_setup.InstallState.error.startswith("cannot run")


def test_an_add_on_run_from_a_checkout_says_it_carries_no_engine(addon, tmp_path):
    with pytest.raises(RuntimeError, match="build.py addon"):
        bpy.ops.splat_restore.install_engine(target=str(tmp_path))


def test_an_interactive_install_ends_showing_its_error_in_the_preferences(addon):
    from blender_addon.engine_install import InstallFailed
    from blender_addon.engine_setup import InstallState, _follow_install

    class Running:
        done = False

    class Failed:
        done, changed, error = True, None, InstallFailed("Installing PyTorch failed", "ERROR: no network")

    InstallState.job = Running()
    assert _follow_install() == 0.25  # timers never fire in background mode: call it as the timer would
    InstallState.job = Failed()
    assert _follow_install() is None
    assert InstallState.job is None and InstallState.error.endswith("ERROR: no network")


CANNED_PROBE = {"engine": "0.1.0", "torch": "2.13.0+cpu", "cuda_build": None, "cuda": False, "cuda_error": "",
                "devices": [{"id": "cpu", "name": "CPU"}]}


@pytest.fixture
def canned_install(addon, tmp_path, monkeypatch):
    """Install Engine with real venvs (without pip: milliseconds) and no pip steps; the preferences name no engine,
    so the add-on picks the one installed."""
    from blender_addon import engine_install, engine_setup

    monkeypatch.setattr(engine_setup, "WHEEL_DIR", stand_in_wheels(tmp_path))
    monkeypatch.setattr(engine_install, "VENV", ("-m", "venv", "--without-pip"))
    monkeypatch.setattr(engine_install, "PROBE", f"print({json.dumps(json.dumps(CANNED_PROBE))})")
    monkeypatch.setattr(engine_install, "install_steps", lambda *args, **kw: [])
    monkeypatch.delenv("SPLAT_RESTORE_ENGINE_PYTHON", raising=False)
    saved = addon.engine_python
    addon.engine_python = ""
    yield engine_install
    addon.engine_python, addon.engine_folder = saved, ""


def test_an_engine_installed_into_a_chosen_folder_is_the_one_used(canned_install, tmp_path):
    from blender_addon.preferences import engine_settings

    folder = tmp_path / "my engines"
    assert bpy.ops.splat_restore.install_engine(target=str(folder)) == {"FINISHED"}
    python = canned_install.engine_python(folder)
    assert python and engine_settings().python == python


def test_the_status_line_names_the_folder_of_the_engine_in_use(canned_install, addon, tmp_path):
    from blender_addon.engine_setup import engine_status

    folder = tmp_path / "my engines"
    bpy.ops.splat_restore.install_engine(target=str(folder))
    assert engine_status(addon) == ["Engine 0.1.0, torch 2.13.0+cpu, CPU only; no CUDA in this torch build",
                                    f"In {folder}"]


def test_an_interactive_install_into_a_chosen_folder_is_the_one_used_when_it_ends(canned_install, tmp_path):
    from blender_addon.engine_install import Installer, InstallJob
    from blender_addon.engine_setup import WHEEL_DIR, InstallState, _follow_install
    from blender_addon.preferences import engine_settings

    folder = tmp_path / "my engines"
    InstallState.job = InstallJob(Installer(folder, WHEEL_DIR, sys.executable))
    InstallState.job.run()  # what the install thread does
    assert _follow_install() is None  # timers never fire in background mode: call it as the timer would
    assert engine_settings().python == canned_install.engine_python(folder) != ""


def test_remove_engine_removes_the_engine_in_use_wherever_it_is(canned_install, addon, tmp_path):
    from blender_addon.preferences import engine_settings

    folder = tmp_path / "my engines"
    bpy.ops.splat_restore.install_engine(target=str(folder))
    python = canned_install.engine_python(folder)
    assert bpy.ops.splat_restore.remove_engine() == {"FINISHED"}
    assert not Path(python).exists() and canned_install.engine_python(folder) == ""
    assert engine_settings().python != python and addon.engine_folder == ""


def test_an_install_whose_new_engine_fails_its_probe_leaves_the_engine_in_use(canned_install, addon, tmp_path,
                                                                              monkeypatch):
    from blender_addon.engine_setup import InstallState
    from blender_addon.preferences import engine_settings

    working, broken = tmp_path / "my engines", tmp_path / "new engines"
    bpy.ops.splat_restore.install_engine(target=str(working))
    in_use = engine_settings().python
    assert in_use == canned_install.engine_python(working)
    monkeypatch.setattr(canned_install, "PROBE", REAL_PROBE)  # run by the new venv, which pip left without torch
    with pytest.raises(RuntimeError, match="Checking the engine failed .*the previous engine is unchanged"):
        bpy.ops.splat_restore.install_engine(target=str(broken))
    assert "No module named 'torch'" in InstallState.error  # why, shown in the preferences
    assert engine_settings().python == in_use and addon.engine_folder == str(working)
    assert canned_install.engine_python(broken) == "" and list((broken / "envs").iterdir()) == []


SLOW_PIP = """
import subprocess, sys
print("Collecting torch", flush=True)
# a child that holds the output pipe, as pip's build backends do: Cancel must stop it too
subprocess.run([sys.executable, "-c", "import time; time.sleep(120)"])
"""


def test_cancel_stops_pip_and_keeps_the_engine_in_use_exactly_as_it_was(canned_install, addon, tmp_path,
                                                                       monkeypatch):
    import time

    from blender_addon.engine_install import Installer, InstallJob, Step
    from blender_addon.engine_setup import WHEEL_DIR, InstallState, _follow_install
    from blender_addon.preferences import engine_settings

    working = tmp_path / "my engines"
    bpy.ops.splat_restore.install_engine(target=str(working))
    in_use, envs = engine_settings().python, sorted((working / "envs").iterdir())
    pointer = (working / "current").read_bytes()
    monkeypatch.setattr(canned_install, "install_steps", lambda *args, **kw: [
        Step("Installing PyTorch (torch==2.13.0)", ("-c", SLOW_PIP))])
    InstallState.job = job = InstallJob(Installer(working, WHEEL_DIR, sys.executable), force=True)
    job.start()
    deadline = time.monotonic() + 60
    while job.line != "Collecting torch":
        assert time.monotonic() < deadline and not job.done, job.error
        time.sleep(0.05)
    started = time.monotonic()
    assert bpy.ops.splat_restore.cancel_install() == {"FINISHED"}
    job.thread.join(30)
    assert not job.thread.is_alive() and time.monotonic() - started < 10  # its child did not keep it waiting
    assert _follow_install() is None  # as the timer would
    assert InstallState.note == "engine install cancelled; the previous engine is unchanged"
    assert InstallState.error == "" and InstallState.job is None
    assert engine_settings().python == in_use and addon.engine_folder == str(working)
    assert (working / "current").read_bytes() == pointer and sorted((working / "envs").iterdir()) == envs
    assert "cancelled" in (working / "install.log").read_text()


def test_install_engine_is_refused_while_online_access_is_off(canned_install, tmp_path):
    bpy.context.preferences.system.use_online_access = False
    with pytest.raises(RuntimeError, match="Install Engine needs the internet, and Blender's online access is off: "
                                           "turn it on in Preferences > System > Network > Allow Online Access"):
        bpy.ops.splat_restore.install_engine(target=str(tmp_path / "engine"))
    assert not (tmp_path / "engine").exists()
