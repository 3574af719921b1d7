"""The Models box in real Blender against a stand-in Hugging Face hub (tests/stand_in_hub.py, on 127.0.0.1) serving
a tiny model in NVIDIA Difix's published layout: Fetch through the operator and restore with it, Cancel halfway and
Fetch again, Blender's online access, the licence gate, and the access token kept out of logs, output and .blend
files. Timers never fire in background mode: the tests call follow_fetch as the timer would."""
import json
import sys
import time
from pathlib import Path

import bpy
import numpy as np
import pytest
from conftest import ROOT, run_engine
from scene import pixels

sys.path.insert(0, str(ROOT / "tests"))
from stand_in_hub import StandInHub  # noqa: E402

DIFIX = "nvidia/difix"
TOKEN = "hf_StandInSecretToken0123456789"


def set_online(on: bool) -> None:
    bpy.context.preferences.system.use_online_access = on
    assert bpy.app.online_access == on


@pytest.fixture
def models(addon, tiny_difix, tmp_path, monkeypatch):
    """The add-on with online access, a Hugging Face cache of its own, and a stand-in hub serving Difix."""
    from blender_addon.models_box import FetchState

    with StandInHub() as hub:
        hub.add(DIFIX, tiny_difix)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        addon.hf_home, addon.accept_license = str(tmp_path / "hf"), True
        set_online(True)
        yield hub
        if FetchState.job is not None:
            FetchState.job.cancel()
            FetchState.job.wait(30)
        FetchState.job, FetchState.message = None, ""
        set_online(False)
        addon.hf_home, addon.hf_token, addon.accept_license, addon.model = "", "", False, "checkpoint"
        addon.difix_weights = DIFIX


def follow(timeout: float = 120.0) -> None:
    """What the app timer does, until the fetch has ended."""
    from blender_addon.models_box import follow_fetch

    deadline = time.monotonic() + timeout
    while follow_fetch() is not None:
        assert time.monotonic() < deadline, "the fetch did not end"
        time.sleep(0.05)


def state(addon):
    from blender_addon.engine_link.hub_cache import model_state
    from blender_addon.models_box import cache_folder

    return model_state(cache_folder(addon), DIFIX)


def restore_with_fetched_difix(addon):
    from blender_addon.state import MANAGER

    MANAGER.stop()
    addon.model, addon.difix_weights = "difix", DIFIX
    bpy.ops.render.render()
    return bpy.ops.splat_restore.restore_render()


def test_fetch_through_the_operator_and_restore_a_render_with_it(scene, addon, models, tiny_difix, tmp_path):
    from blender_addon.models_box import FetchState
    from blender_addon.operators import save_render_png

    assert bpy.ops.splat_restore.fetch_model(model_id=DIFIX) == {"FINISHED"}
    assert FetchState.job is not None and FetchState.job.process.poll() is None  # a background process
    assert not state(addon).present  # not before it has finished
    follow()
    assert FetchState.message.startswith(f"{DIFIX} fetched") and not FetchState.failed
    assert state(addon).present and state(addon).bytes_on_disk > 4_000_000
    assert (tmp_path / "hf" / "hub" / "models--nvidia--difix").is_dir()  # into the chosen cache folder
    asked = len(models.requests)
    assert restore_with_fetched_difix(addon) == {"FINISHED"}
    assert len(models.requests) == asked  # restores never go online
    src = tmp_path / "render.png"
    save_render_png(scene, src)
    r = run_engine("-m", "engine", "restore", src, "-o", tmp_path / "out", "--weights", tiny_difix, "--device",
                   "cpu", "--accept-license")
    assert r.returncode == 0, r.stderr
    assert np.abs(pixels(bpy.data.images["Restored Render"]) - pixels(tmp_path / "out" / "render.png")).max() < 1e-6


def test_cancel_halfway_leaves_no_model_and_fetch_again_completes(scene, addon, models):
    from blender_addon.models_box import FetchState, fetch_log

    models.rate = 300_000  # bytes per second: about 15 s for the whole model
    assert bpy.ops.splat_restore.fetch_model(model_id=DIFIX) == {"FINISHED"}
    job = FetchState.job
    deadline = time.monotonic() + 60
    while job.done_bytes < 1_500_000:
        assert time.monotonic() < deadline and job.outcome == "", job.message
        time.sleep(0.05)
    assert job.total > 4_000_000 and "of 4.5 MB" in job.describe() and "/s" in job.describe()
    assert bpy.ops.splat_restore.cancel_fetch() == {"FINISHED"}
    follow(30)
    assert "cancelled" in FetchState.message and not FetchState.failed
    after_cancel = state(addon)
    assert not after_cancel.present and after_cancel.interrupted and after_cancel.partial_bytes > 0
    with pytest.raises(RuntimeError, match=f"python -m engine fetch {DIFIX}"):  # the engine refuses it
        restore_with_fetched_difix(addon)

    models.rate, models.requests[:] = 0, []
    assert bpy.ops.splat_restore.fetch_model(model_id=DIFIX) == {"FINISHED"}
    follow()
    assert state(addon).present and FetchState.message.startswith(f"{DIFIX} fetched")
    plan = json.loads(next(line for line in fetch_log(addon).read_text().splitlines() if '"plan"' in line))
    assert plan["done"] >= 1_000_000  # it continued: what the cancelled fetch downloaded was kept
    assert any(h.get("range") for _m, _p, h in models.requests)
    assert restore_with_fetched_difix(addon) == {"FINISHED"}


def test_with_online_access_off_fetch_and_install_engine_are_refused_saying_where_to_turn_it_on(addon, models):
    set_online(False)
    for op in (lambda: bpy.ops.splat_restore.fetch_model(model_id=DIFIX), bpy.ops.splat_restore.install_engine):
        with pytest.raises(RuntimeError, match="online access is off: turn it on in Preferences > System > "
                                               "Network > Allow Online Access"):
            op()
    assert models.requests == [] and not state(addon).bytes_on_disk


def test_difix_is_not_fetched_until_its_licence_is_accepted(addon, models):
    addon.accept_license = False
    with pytest.raises(RuntimeError, match="NVIDIA License .*non-commercial.*tick its acceptance box"):
        bpy.ops.splat_restore.fetch_model(model_id=DIFIX)
    assert models.requests == []


def test_delete_removes_a_fetched_model(addon, models, tmp_path):
    assert bpy.ops.splat_restore.fetch_model(model_id=DIFIX, wait=True) == {"FINISHED"}
    assert state(addon).present
    assert bpy.ops.splat_restore.delete_model(model_id=DIFIX) == {"FINISHED"}
    assert not state(addon).present and not (tmp_path / "hf" / "hub" / "models--nvidia--difix").exists()


def test_the_token_reaches_the_hub_only_through_fetch_and_is_never_written(addon, models, tiny_difix, tmp_path,
                                                                           capfd):
    from blender_addon.models_box import fetch_log
    from blender_addon.preferences import engine_settings

    models.token = TOKEN  # the repository is now gated: nothing without the token
    with pytest.raises(RuntimeError, match="401"):
        bpy.ops.splat_restore.fetch_model(model_id=DIFIX, wait=True)
    addon.hf_token = TOKEN
    assert bpy.ops.splat_restore.fetch_model(model_id=DIFIX, wait=True) == {"FINISHED"}
    assert state(addon).present
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for _m, _p, h in models.requests)
    assert "HF_TOKEN" not in engine_settings().env  # restores get no token
    assert TOKEN not in fetch_log(addon).read_text() and "fetch nvidia/difix --json" in fetch_log(addon).read_text()
    out, err = capfd.readouterr()
    assert TOKEN not in out + err
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True, compress=False)
    assert TOKEN.encode() not in blend.read_bytes()  # add-on preferences are not scene data
    bpy.ops.wm.save_userpref()
    userpref = Path(bpy.utils.resource_path("USER")) / "config" / "userpref.blend"
    assert TOKEN.encode() in userpref.read_bytes()  # where Blender keeps it: the user's preferences


def stand_in_wheels(tmp_path) -> Path:
    """engine_wheel/ as the add-on zip carries it: a placeholder wheel, the pins, the constraints."""
    wheels = tmp_path / "engine_wheel"
    wheels.mkdir()
    (wheels / "splat_restore-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (wheels / "pins.json").write_text(json.dumps({"torch": "torch==2.13.0", "mediapipe": "mediapipe==0.10.21"}))
    (wheels / "constraints.txt").write_text("")
    return wheels


def test_install_engine_never_gets_the_token(addon, models, tmp_path, monkeypatch, capfd):
    """An install whose one step prints its whole environment: the token is not in it, nor in install.log."""
    from blender_addon import engine_install, engine_setup
    from blender_addon.engine_install import Step

    wheels = stand_in_wheels(tmp_path)
    probe = {"engine": "0.1.0", "torch": "2.13.0+cpu", "cuda_build": None, "devices": [{"id": "cpu", "name": "CPU"}]}
    monkeypatch.setattr(engine_setup, "WHEEL_DIR", wheels)
    monkeypatch.setattr(engine_install, "VENV", ("-m", "venv", "--without-pip"))
    monkeypatch.setattr(engine_install, "PROBE", f"print({json.dumps(json.dumps(probe))})")
    monkeypatch.setattr(engine_install, "install_steps", lambda *args, **kw: [
        Step("Installing PyTorch", ("-c", "import os; print(sorted(os.environ.items()))"))])
    addon.hf_token = TOKEN
    try:
        assert bpy.ops.splat_restore.install_engine(target=str(tmp_path / "engine")) == {"FINISHED"}
    finally:
        addon.engine_folder = ""
    log = (tmp_path / "engine" / "install.log").read_text()
    assert "'PATH'" in log and TOKEN not in log
    out, err = capfd.readouterr()
    assert "PATH" in out and TOKEN not in out + err


def test_the_models_box_lists_each_model_with_its_state_and_licence(addon, models, tiny_weights):
    from blender_addon.engine_link.hub_cache import model_state
    from blender_addon.model_list import HUB_MODELS, read_checkpoint
    from blender_addon.models_box import cache_folder

    assert [m.id for m in HUB_MODELS] == ["nvidia/difix", "nvidia/difix_ref", "stabilityai/sd-turbo"]
    assert [m.needs_acceptance for m in HUB_MODELS] == [True, True, False]
    assert model_state(cache_folder(addon), "stabilityai/sd-turbo").describe() == "Not fetched"
    mine = read_checkpoint(tiny_weights)
    assert mine.exists and mine.bytes == tiny_weights.stat().st_size and mine.problem == "" and mine.base


class FakeLayout:
    """Records what a draw function puts in the preferences (no window in background mode): each item with whether
    every layout above it is enabled."""

    def __init__(self, items=None, parent=None):
        self.items, self.parent, self.enabled = [] if items is None else items, parent, True

    def _on(self) -> bool:
        return self.enabled and (self.parent is None or self.parent._on())

    def _sub(self, *args, **kw):
        return FakeLayout(self.items, self)

    box = row = column = _sub

    def label(self, text="", icon="NONE"):
        self.items.append(("label", text, self._on()))

    def prop(self, data, name, text=None, **kw):
        self.items.append(("prop", name, self._on()))

    def progress(self, factor=0.0, type="BAR", text=""):
        self.items.append(("progress", text, factor))

    def operator(self, idname, text="", icon="NONE"):
        class Props:
            pass

        props = Props()
        self.items.append(("operator", idname, self._on(), props))
        return props


def fetch_buttons(items):
    return {item[3].model_id: item[2] for item in items if item[0] == "operator" and item[1].endswith("fetch_model")}


def test_the_models_box_shows_licence_before_fetch_and_enables_fetch_only_when_allowed(addon, models):
    from blender_addon.models_box import FetchState, draw_models_box

    addon.accept_license = False
    set_online(False)
    layout = FakeLayout()
    draw_models_box(layout, addon)
    labels = [i[1] for i in layout.items if i[0] == "label"]
    assert any("online access is off" in text and "Preferences > System > Network" in text for text in labels)
    assert fetch_buttons(layout.items) == {"nvidia/difix": False, "nvidia/difix_ref": False,
                                           "stabilityai/sd-turbo": False}
    first_fetch = next(n for n, i in enumerate(layout.items) if i[0] == "operator" and i[1].endswith("fetch_model"))
    assert any("NVIDIA License" in i[1] and "non-commercial" in i[1] for i in layout.items[:first_fetch]
               if i[0] == "label")
    set_online(True)
    layout = FakeLayout()
    draw_models_box(layout, addon)
    assert fetch_buttons(layout.items) == {"nvidia/difix": False, "nvidia/difix_ref": False,
                                           "stabilityai/sd-turbo": True}  # Difix's licence is not accepted
    addon.accept_license = True
    layout = FakeLayout()
    draw_models_box(layout, addon)
    assert set(fetch_buttons(layout.items).values()) == {True}
    assert {"hf_home", "hf_token"} <= {i[1] for i in layout.items if i[0] == "prop"}

    models.rate = 200_000
    assert bpy.ops.splat_restore.fetch_model(model_id=DIFIX) == {"FINISHED"}
    while FetchState.job.done_bytes < 300_000:
        time.sleep(0.05)
    layout = FakeLayout()
    draw_models_box(layout, addon)
    progress = [i for i in layout.items if i[0] == "progress"]
    assert len(progress) == 1 and " of 4.5 MB, " in progress[0][1] and 0 < progress[0][2] < 1
    assert any(i[0] == "operator" and i[1] == "splat_restore.cancel_fetch" for i in layout.items)
    assert not any(fetch_buttons(layout.items).values())  # one fetch at a time
    bpy.ops.splat_restore.cancel_fetch()
    follow(30)


def test_the_engine_box_offers_cancel_while_an_install_runs_and_no_install_while_offline(addon, tmp_path,
                                                                                        monkeypatch):
    from blender_addon import engine_setup
    from blender_addon.engine_setup import InstallState, draw_engine_box

    monkeypatch.setattr(engine_setup, "WHEEL_DIR", stand_in_wheels(tmp_path))

    class Running:
        phase, line, cancelling, done = "Installing PyTorch (torch==2.13.0)", "Collecting torch", False, False

    InstallState.job = Running()
    try:
        layout = FakeLayout()
        draw_engine_box(layout, addon)
    finally:
        InstallState.job = None
    assert ("label", "Installing PyTorch (torch==2.13.0)...", True) in layout.items
    assert any(i[0] == "operator" and i[1] == "splat_restore.cancel_install" for i in layout.items)
    installs = []
    for on in (True, False):
        set_online(on)
        layout = FakeLayout()
        draw_engine_box(layout, addon)
        installs += [i[2] for i in layout.items if i[0] == "operator" and i[1] == "splat_restore.install_engine"]
    assert installs == [True, False]
    assert any("online access is off" in i[1] for i in layout.items if i[0] == "label")


def test_a_fresh_blender_restores_with_difix_fetched_through_the_preferences_alone(tiny_difix, tmp_path):
    """The built extension zip in a fresh Blender: Fetch, accept, choose NVIDIA Difix, Restore Render."""
    import os
    import subprocess

    from conftest import engine_python

    r = subprocess.run([sys.executable, str(ROOT / "build.py"), "addon"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    zip_path = r.stdout.strip().splitlines()[-1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "HF_TOKEN")}
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("models_zip_check.py")), zip_path,
                        engine_python(), str(tiny_difix), str(tmp_path)], capture_output=True, text=True,
                       timeout=900, env={**env, "BLENDER_USER_RESOURCES": str(tmp_path / "user")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "MODELS OK" in r.stdout
