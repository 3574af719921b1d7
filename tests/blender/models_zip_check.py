"""Run in a fresh Blender process: install the built zip as an extension, then through the preferences alone fetch
NVIDIA Difix from a stand-in hub (tests/stand_in_hub.py, in this process), accept its licence, choose it and
restore a render. The engine is the tests' (Install Engine needs the package registries; test_engine_install.py
runs it). argv: ZIP ENGINE_PYTHON DIFIX_FOLDER WORKDIR"""
import os
import sys
import time
from pathlib import Path

import bpy

zip_path, engine_python, difix_folder, work = sys.argv[1:5]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from scene import build_scene  # noqa: E402
from stand_in_hub import StandInHub  # noqa: E402

bpy.ops.wm.read_factory_settings(use_empty=True)
assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                enable_on_install=True) == {"FINISHED"}
package = "bl_ext.user_default.splat_restore"
prefs = bpy.context.preferences.addons[package].preferences
models_box = sys.modules[f"{package}.models_box"]
prefs.engine_python, prefs.device, prefs.hf_home = engine_python, "cpu", str(Path(work) / "hf")
bpy.context.preferences.system.use_online_access = True
with StandInHub() as hub:
    hub.add("nvidia/difix", Path(difix_folder))
    os.environ["HF_ENDPOINT"] = hub.url
    prefs.accept_license = True
    assert bpy.ops.splat_restore.fetch_model(model_id="nvidia/difix") == {"FINISHED"}
    deadline = time.monotonic() + 300
    while models_box.follow_fetch() is not None:  # what the app timer does
        assert time.monotonic() < deadline, "the fetch did not end"
        time.sleep(0.1)
    assert models_box.FetchState.message.startswith("nvidia/difix fetched"), models_box.FetchState.message
prefs.model = "difix"  # Difix Weights is nvidia/difix unless changed
build_scene()
bpy.ops.render.render()
assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
assert tuple(bpy.data.images["Restored Render"].size) == (32, 32)
bpy.ops.splat_restore.stop_engine()
print("MODELS OK")
