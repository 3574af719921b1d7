"""Run in a fresh Blender process: validate the built zip with Blender's own tool, install it as an extension the
way the Preferences installer does, and restore a render with it. argv: ZIP ENGINE_PYTHON WEIGHTS WORKDIR"""
import subprocess
import sys
from pathlib import Path

import bpy

zip_path, engine_python, weights, work = sys.argv[1:5]
sys.path.insert(0, str(Path(__file__).parent))
from scene import build_scene  # noqa: E402

blender_ext = Path(bpy.utils.resource_path("LOCAL")) / "scripts" / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
check = subprocess.run([sys.executable, str(blender_ext), "validate", zip_path], capture_output=True, text=True)
assert check.returncode == 0, check.stdout + check.stderr

bpy.ops.wm.read_factory_settings(use_empty=True)
assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                enable_on_install=True) == {"FINISHED"}
module = "bl_ext.user_default.splat_restore"
assert module in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
prefs = bpy.context.preferences.addons[module].preferences
prefs.engine_python, prefs.weights, prefs.device = engine_python, weights, "cpu"
build_scene()
bpy.ops.render.render()
assert bpy.ops.splat_restore.restore_render() == {"FINISHED"}
assert tuple(bpy.data.images["Restored Render"].size) == (32, 32)
bpy.ops.splat_restore.stop_engine()
print("ZIP OK")
