"""The add-on in real Blender when things go wrong: settings that would overwrite renders or restores, an empty
folder choice, a hung engine, the exit code a render farm sees, and temporary files left behind."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import bpy
import pytest
from conftest import ROOT
from scene import pixels

sys.path.insert(0, str(ROOT / "tests"))
from stand_in_engine import make_stand_in  # noqa: E402


def _state():
    from blender_addon.exit_status import FAILURES
    from blender_addon.state import MANAGER, RenderState

    return MANAGER, RenderState, FAILURES


@pytest.fixture
def stand_in(addon, tmp_path):
    """Point the preferences at a stand-in engine with 1 s limits; the real engine comes back afterwards."""
    saved = addon.engine_python, addon.startup_timeout, addon.stall_timeout
    _state()[0].stop()

    def use(behaviour) -> Path:
        script = make_stand_in(tmp_path / "bin", behaviour)
        addon.engine_python = str(script)
        addon.startup_timeout = addon.stall_timeout = 1.0
        return script
    yield use
    _state()[0].stop()
    addon.engine_python, addon.startup_timeout, addon.stall_timeout = saved


@pytest.mark.parametrize("folder", ["", ".", "../escaped", "//restored", "ABSOLUTE"])
def test_a_folder_setting_that_would_overwrite_or_escape_the_renders_is_refused(scene, tmp_path, folder):
    renders = tmp_path / "shot" / "renders"
    scene.render.filepath = str(renders / "f_####")
    scene.splat_restore.auto_restore = True
    scene.splat_restore.folder = str(tmp_path / "abs") if folder == "ABSOLUTE" else folder
    written = {}

    def snapshot(scene_, *_):  # runs after the add-on's render_write: the frame as Blender wrote it
        for p in renders.iterdir():
            written.setdefault(p.name, p.read_bytes())
    bpy.app.handlers.render_write.append(snapshot)
    try:
        bpy.ops.render.render(animation=True)
    finally:
        bpy.app.handlers.render_write.remove(snapshot)
        scene.splat_restore.folder = "restored"
    _, state, failures = _state()
    assert sorted(written) == ["f_0001.png", "f_0002.png", "f_0003.png"]
    assert {p.name: p.read_bytes() for p in renders.iterdir()} == written  # the renders stay the renders
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(written)  # nothing else written
    assert "Folder setting" in state.last_report
    assert failures.failures == [state.last_report]  # a farm would see it (bpy runs in background mode)


def test_restore_folder_without_a_folder_is_refused_and_writes_nothing(addon, tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"a saved render")
    monkeypatch.chdir(tmp_path)  # today's "" became "." : Blender's working directory
    with pytest.raises(RuntimeError, match="no input folder chosen"):
        bpy.ops.splat_restore.restore_folder(input_dir="")
    with pytest.raises(RuntimeError, match="no input folder chosen"):  # as the panel's button calls it
        bpy.ops.splat_restore.restore_folder("INVOKE_DEFAULT")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_a_hung_engine_ends_the_render_with_every_frame_failed(scene, stand_in, tmp_path):
    stand_in("silent")
    scene.splat_restore.auto_restore = True
    scene.render.filepath = str(tmp_path / "f_####")
    bpy.ops.render.render(animation=True)
    _, state, failures = _state()
    assert "0 restored, 3 failed" in state.last_report and "no answer for 1 s" in state.last_report
    assert failures.failures == [state.last_report]
    assert sorted(p.name for p in tmp_path.glob("f_*.png")) == ["f_0001.png", "f_0002.png", "f_0003.png"]


def test_restore_render_stops_a_hung_engine_with_a_clear_error(scene, stand_in):
    stand_in("silent")
    bpy.ops.render.render()
    with pytest.raises(RuntimeError, match="no answer for 1 s"):
        bpy.ops.splat_restore.restore_render()
    stand_in("silent-start")
    with pytest.raises(RuntimeError, match="did not become ready within 1 s"):
        bpy.ops.splat_restore.restore_render()


def test_an_engine_of_another_protocol_version_is_reported_naming_both(scene, stand_in):
    stand_in("protocol:7")
    bpy.ops.render.render()
    with pytest.raises(RuntimeError, match="protocol version 7 .* this add-on speaks version 1"):
        bpy.ops.splat_restore.restore_render()


def test_the_engine_runs_with_the_preferences_speed_settings(scene, addon):
    from blender_addon.preferences import engine_settings

    assert addon.device_menu == "cpu" and engine_settings().device == "cpu"
    addon.device_menu = "auto"
    assert addon.device == "auto"
    addon.device_menu = "cpu"
    addon.batch_size, addon.min_face, addon.compile = 3, 40, "off"
    try:
        bpy.ops.render.render()
        assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
        command = _state()[0].client.settings.command()
        assert _state()[0].client.ready["batch_size"] == 3
        assert " ".join(command[3:]).count("--min-face 40 --compile off") == 1
    finally:
        addon.batch_size, addon.min_face, addon.compile = 1, 72, "auto"


@pytest.mark.parametrize("behaviour, env, code", [
    ("fail", {}, 1),  # every restore failed
    ("silent", {}, 1),  # a hung engine: stopped at the limit, not a farm task hanging forever
    ("copy", {}, 0),  # all restored
    ("fail", {"SPLAT_RESTORE_FAIL_ON_ERRORS": "0"}, 0),  # the farm's opt-out
])
def test_a_background_render_exits_non_zero_when_its_restores_failed(tiny_weights, tmp_path, behaviour, env, code):
    python = make_stand_in(tmp_path / "bin", behaviour)
    env = {**{k: v for k, v in os.environ.items() if k != "SPLAT_RESTORE_FAIL_ON_ERRORS"},
           "BLENDER_USER_RESOURCES": str(tmp_path / "user"), **env}
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("farm_render_check.py")), str(python),
                        str(tiny_weights), str(tmp_path / "out"), "1"], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    assert r.returncode == code, r.stdout[-2000:] + r.stderr[-3000:]
    assert "RENDER DONE" in r.stdout  # the whole render ran; the exit code is set afterwards
    assert sorted(p.name for p in (tmp_path / "out").glob("f_*.png")) == ["f_0001.png", "f_0002.png", "f_0003.png"]
    summary = "Splat Restore: exiting with code 1 because restoring failed"
    assert (summary in r.stderr) == (code == 1)
    if code == 1:
        assert "0 restored, 3 failed" in r.stderr
    if behaviour == "copy":
        assert len(list((tmp_path / "out" / "restored").glob("f_*.png"))) == 3


def test_restore_folder_skips_partial_files_and_its_own_output(scene, tmp_path):
    saved = tmp_path / "saved"
    scene.render.filepath = str(saved / "r_####")
    bpy.ops.render.render(animation=True)
    (saved / ".r_0004.0123abcd.partial.png").write_bytes((saved / "r_0001.png").read_bytes())
    for _ in range(2):  # the second run must not restore the first run's outputs
        assert bpy.ops.splat_restore.restore_folder(input_dir=str(saved), recursive=True) == {"FINISHED"}
    assert sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*.png") if "partial" not in p.name) == [
        "r_0001.png", "r_0002.png", "r_0003.png", "restored/r_0001.png", "restored/r_0002.png",
        "restored/r_0003.png"]


def test_refresh_lists_the_engine_devices_in_the_menu(addon):
    from blender_addon.preferences import DeviceMenu

    assert bpy.ops.splat_restore.refresh_devices() == {"FINISHED"}
    assert DeviceMenu.listed[0][0] == "cpu"  # this machine has no GPU
    addon.device_menu = "cpu"
    assert addon.device == "cpu"


@pytest.fixture
def two_shots(scene, tmp_path):
    """Two shots rendered apart, their frames named alike (f_0001.png...), as every Blender shot names them."""
    shots = []
    for k, exposure in enumerate([0.0, 1.5]):
        scene.view_settings.exposure = exposure
        scene.render.filepath = str(tmp_path / f"shot{k + 1}" / "f_####")
        bpy.ops.render.render(animation=True)
        shots.append(tmp_path / f"shot{k + 1}")
    scene.view_settings.exposure = 0.0
    return shots


def test_restore_folder_keeps_restored_files_already_in_the_output_folder(two_shots, tmp_path):
    out = tmp_path / "restored"
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(two_shots[0]), output_dir=str(out)) == {"FINISHED"}
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(two_shots[1]), output_dir=str(out)) == {"FINISHED"}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # shot 1's restores are still shot 1's
    assert "0 of 3 renders restored, 3 skipped" in _state()[1].last_report


def test_restore_folder_overwrites_existing_files_when_asked(two_shots, tmp_path):
    out = tmp_path / "restored"
    bpy.ops.splat_restore.restore_folder(input_dir=str(two_shots[0]), output_dir=str(out))
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(two_shots[1]), output_dir=str(out),
                                                existing="overwrite") == {"FINISHED"}
    second = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(second) == sorted(first) and all(second[name] != first[name] for name in first)
    assert "3 of 3 renders restored" in _state()[1].last_report


@pytest.fixture
def saved_renders(scene, tmp_path):
    """Three saved renders, and what Blender wrote in each."""
    scene.render.filepath = str(tmp_path / "saved" / "r_####")
    bpy.ops.render.render(animation=True)
    return {p: p.read_bytes() for p in sorted((tmp_path / "saved").iterdir())}


def test_restore_folder_sends_a_restarted_engine_only_the_renders_not_yet_restored(saved_renders, stand_in, tmp_path):
    engine = stand_in("dies-mid-batch:1/3")  # restores and reports r_0001, then dies; restarted, it restores the rest
    out = tmp_path / "fixed"
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(tmp_path / "saved"), output_dir=str(out),
                                                existing="overwrite") == {"FINISHED"}
    first, *rest = saved_renders
    assert engine.with_suffix(".resent").read_text().splitlines() == [str(p) for p in rest]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: b + b" restored"
                                                              for p, b in saved_renders.items()}  # each once
    assert "3 of 3 renders restored" in _state()[1].last_report


def test_renders_restored_before_an_engine_crash_are_reported_restored_not_skipped(saved_renders, stand_in, tmp_path):
    stand_in("dies-mid-batch:1/3")
    assert bpy.ops.splat_restore.restore_folder(input_dir=str(tmp_path / "saved"),
                                                output_dir=str(tmp_path / "fixed")) == {"FINISHED"}  # Skip
    assert _state()[1].last_report == "Splat Restore: 3 of 3 renders restored"


@pytest.fixture
def temp_root(monkeypatch, tmp_path):
    """Python's temporary folder for this test alone, to see what Restore Render leaves there."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_restore_render_leaves_no_temporary_files(scene, temp_root):
    bpy.ops.render.render()
    assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
    assert list(temp_root.iterdir()) == []
    assert pixels(bpy.data.images["Restored Render"]).shape == (32, 32, 4)  # packed: shown without its file


def test_a_failed_restore_render_leaves_no_temporary_files(scene, stand_in, temp_root):
    stand_in("fail")
    bpy.ops.render.render()
    with pytest.raises(RuntimeError, match="stand-in failure"):
        bpy.ops.splat_restore.restore_render()
    assert list(temp_root.iterdir()) == []


# answers a restore only once it is cancelled, as the engine does for a request cancelled while queued
CANCELLED_ENGINE = """import json, sys
def send(message):
    print(json.dumps(message), flush=True)
send({"event": "ready", "ok": True, "version": "stand-in", "protocol": 1, "device": "cpu"})
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("op") == "cancel":
        send({"id": msg["target"], "ok": False, "error": {"code": "cancelled", "message": "cancelled"}})
    if msg.get("op") in ("cancel", "shutdown"):
        send({"id": msg["id"], "ok": True, "result": {}})
    if msg.get("op") == "shutdown":
        break
"""


def test_a_cancelled_restore_render_leaves_no_temporary_files(scene, addon, stand_in, temp_root, tmp_path,
                                                             monkeypatch):
    from blender_addon import operators

    stand_in("copy")  # its limits; the engine itself is the cancelling one below
    engine = tmp_path / "bin" / "cancelled_engine"
    engine.write_text(f"#!{sys.executable}\n{CANCELLED_ENGINE}")
    engine.chmod(0o755)
    addon.engine_python = str(engine)
    real_run = operators.EngineJob.run

    def run_pressing_esc(job):  # background mode has no modal loop: press Esc as it would, once the request is out
        send = job.send

        def sent_then_cancelled(client):
            job.request = send(client)
            job.cancel()
            return job.request
        job.send = sent_then_cancelled
        real_run(job)
    monkeypatch.setattr(operators.EngineJob, "run", run_pressing_esc)
    bpy.ops.render.render()
    assert bpy.ops.splat_restore.restore_render() == {"CANCELLED"}
    assert list(temp_root.iterdir()) == []
