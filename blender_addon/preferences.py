"""Add-on preferences: which engine interpreter, which weights, which device; engine status and Stop Engine."""
import bpy

from .engine_link.client import EngineSettings
from .frame_queue import default_engine_python
from .state import MANAGER


class SPLATRESTORE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_python: bpy.props.StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="The engine's own interpreter (its venv: .venv/bin/python, or .venv\\Scripts\\python.exe on "
                    "Windows). Empty: $SPLAT_RESTORE_ENGINE_PYTHON or the checkout's .venv")
    weights: bpy.props.StringProperty(name="Weights", subtype="FILE_PATH",
                                      description="Restorer checkpoint (.safetensors)")
    base: bpy.props.StringProperty(name="Base Model", default="",
                                   description="Diffusers folder or hub id; empty: the one named in the weights")
    device: bpy.props.EnumProperty(name="Device", default="auto", items=[
        ("auto", "Auto", "CUDA, then Metal, then CPU"), ("cuda", "CUDA", ""), ("mps", "Metal", ""),
        ("cpu", "CPU", "")])

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "engine_python")
        if not self.engine_python:
            layout.label(text=f"Using: {default_engine_python() or 'nothing found'}")
        layout.prop(self, "weights")
        layout.prop(self, "base")
        layout.prop(self, "device")
        row = layout.row()
        row.label(text=f"Engine: {MANAGER.status}")
        row.operator("splat_restore.stop_engine")
        if MANAGER.last_error:
            layout.label(text=MANAGER.last_error.splitlines()[0], icon="ERROR")


def preferences(context=None):
    return (context or bpy.context).preferences.addons[__package__].preferences


def engine_settings(context=None) -> EngineSettings:
    prefs = preferences(context)
    python = bpy.path.abspath(prefs.engine_python) if prefs.engine_python else default_engine_python()
    return EngineSettings(python=python, weights=bpy.path.abspath(prefs.weights) if prefs.weights else "",
                          base=prefs.base, device=prefs.device)


def register():
    bpy.utils.register_class(SPLATRESTORE_AP_preferences)


def unregister():
    bpy.utils.unregister_class(SPLATRESTORE_AP_preferences)
