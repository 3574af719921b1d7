"""A farm task as close as the bpy module gets to `blender -b scene.blend -a`: a fresh process enables the add-on,
renders an animation with Restore Every Frame, and ends normally; the caller checks the exit code.
argv: ENGINE_PYTHON WEIGHTS OUTDIR STALL_TIMEOUT"""
import sys
from pathlib import Path

import bpy

import addon_utils  # noqa: I001 (importable only once bpy is)

engine_python, weights, out, stall = sys.argv[1:5]
root = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(root), str(Path(__file__).parent)]
from scene import build_scene  # noqa: E402

bpy.ops.wm.read_factory_settings(use_empty=True)
assert addon_utils.enable("blender_addon", default_set=True) is not None
prefs = bpy.context.preferences.addons["blender_addon"].preferences
prefs.engine_python, prefs.weights, prefs.device = engine_python, weights, "cpu"
prefs.startup_timeout = prefs.stall_timeout = float(stall)
scene = build_scene()
scene.splat_restore.auto_restore = True
scene.render.filepath = str(Path(out) / "f_####")
bpy.ops.render.render(animation=True)
print("RENDER DONE", flush=True)
