"""Add-on preferences: the engine interpreter, weights, device and speed settings, time limits; engine status; the
Models box (models_box.py) with the Hugging Face cache folder and access token.

The access token is an add-on preference, so Blender keeps it in userpref.blend (the user's preferences, saved when
they are) and never in a scene's .blend: add-on preferences are not scene data. It goes to the fetch process only,
in its environment, never on a command line, into a log or a report."""
import bpy

from . import devices, models_box
from .engine_setup import draw_engine_box, installed_engine_python
from .engine_link.client import EngineSettings
from .engine_link.hub_cache import hf_home_env
from .engine_link.licenses import ACCEPT_ENV, NVIDIA_DIFIX
from .engine_link.weights import DIFIX_HUB_ID, MODELS
from .engine_manager import default_engine_python
from .state import MANAGER


class DeviceMenu:
    listed = []  # what Refresh got from the engine
    items = []  # Blender keeps no copy of dynamic enum strings: they must stay referenced here


def _device_items(prefs, context):
    DeviceMenu.items = devices.menu(DeviceMenu.listed, prefs.device)
    return DeviceMenu.items


def _get_device_index(prefs):
    ids = [i[0] for i in devices.menu(DeviceMenu.listed, prefs.device)]
    return ids.index(prefs.device) if prefs.device in ids else 0


def _set_device_index(prefs, index):
    prefs.device = devices.menu(DeviceMenu.listed, prefs.device)[index][0]


class SPLATRESTORE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_python: bpy.props.StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="The engine's own interpreter (its venv: .venv/bin/python, or .venv\\Scripts\\python.exe on "
                    "Windows). Empty: $SPLAT_RESTORE_ENGINE_PYTHON, the engine Install Engine made, or the "
                    "checkout's .venv")
    engine_folder: bpy.props.StringProperty(
        name="Engine Folder", subtype="DIR_PATH",
        description="Where the engine in use was installed; Install Engine sets it. Empty: the extension's user "
                    "folder")
    install_python: bpy.props.StringProperty(
        name="Python for Install", subtype="FILE_PATH",
        description="The Python 3.10-3.12 that Install Engine makes the engine's environment with; empty: "
                    "Blender's own")
    model: bpy.props.EnumProperty(name="Model", items=MODELS, default="checkpoint",
                                  description="Which restorer the engine runs")
    weights: bpy.props.StringProperty(name="Weights", subtype="FILE_PATH",
                                      description="Restorer checkpoint (.safetensors)")
    difix_weights: bpy.props.StringProperty(
        name="Difix Weights", default=DIFIX_HUB_ID,
        description=f"{DIFIX_HUB_ID} (or nvidia/difix_ref) from the Hugging Face cache (Fetch it in the Models "
                    f"box), or a folder in its published layout")
    accept_license: bpy.props.BoolProperty(
        name=f"I accept the {NVIDIA_DIFIX.name} (non-commercial use only)", default=False,
        description=f"{NVIDIA_DIFIX.describe()}")
    base: bpy.props.StringProperty(name="Base Model", default="",
                                   description="Diffusers folder or hub id; empty: the one named in the weights")
    device: bpy.props.StringProperty(name="Device", default="auto",
                                     description="auto, cpu, cuda, cuda:N or mps, as the engine's --device")
    device_menu: bpy.props.EnumProperty(name="Device", items=_device_items, get=_get_device_index,
                                        set=_set_device_index, description="Devices the engine reported (Refresh)")
    batch_size: bpy.props.IntProperty(
        name="Batch Size", default=1, min=1, max=64,
        description="Frames (or tiles, or faces) per model call; frames queued during a render are batched. "
                    "Larger is faster on a GPU with memory to spare")
    tile: bpy.props.IntProperty(name="Tile", default=0, min=0, soft_max=2048,
                                description="Tile size for frames larger than it; 0: the model's size (512)")
    min_face: bpy.props.IntProperty(name="Smallest Face", default=72, min=8, subtype="PIXEL",
                                    description="Smallest face side searched for in Faces mode (smaller: slower)")
    compile: bpy.props.EnumProperty(name="Compile", default="auto", items=[
        ("auto", "Auto", "torch.compile on CUDA only, in the background: frames are restored meanwhile, and faster "
                         "once the engine status no longer says compiling"),
        ("on", "On", ""), ("off", "Off", "No compile: no background work, frames stay at eager speed")])
    startup_timeout: bpy.props.FloatProperty(
        name="Start-up Limit", default=300.0, min=1.0, subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE",
        description="Seconds the engine may take to load the model before it is stopped with an error")
    hf_home: bpy.props.StringProperty(
        name="Hugging Face Cache", subtype="DIR_PATH",
        description="Where fetched models are kept (HF_HOME for every engine process); empty: Hugging Face's own "
                    "($HF_HOME, else ~/.cache/huggingface)")
    hf_token: bpy.props.StringProperty(
        name="Access Token", subtype="PASSWORD",
        description="A Hugging Face token for gated or private repositories; given to Fetch only (as HF_TOKEN). "
                    "Kept in Blender's user preferences, never in .blend files")
    stall_timeout: bpy.props.FloatProperty(
        name="Per-Frame Limit", default=600.0, min=1.0, subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE",
        description="Seconds the engine may go without finishing a frame (while frames are waiting) before it "
                    "is stopped as hung and those frames fail")

    def draw_difix(self, layout):
        layout.prop(self, "difix_weights")
        box = layout.box()
        box.label(text=f"{NVIDIA_DIFIX.name}: non-commercial use only (research or evaluation).", icon="INFO")
        box.label(text="Its SD-Turbo base also falls under the Stability AI Community License.")
        box.operator("wm.url_open", text="Read the licence").url = NVIDIA_DIFIX.url
        box.prop(self, "accept_license")
        if not self.accept_license:
            box.label(text=f"Not accepted: the engine refuses these weights (farms: {ACCEPT_ENV}=1)",
                      icon="ERROR")

    def draw(self, context):
        layout = self.layout
        draw_engine_box(layout, self)
        models_box.draw_models_box(layout, self)
        layout.prop(self, "engine_python")
        if not self.engine_python:
            layout.label(text=f"Using: {default_engine_python(installed_engine_python(self)) or 'nothing found'}")
        layout.prop(self, "model")
        if self.model == "difix":
            self.draw_difix(layout)
        else:
            layout.prop(self, "weights")
            layout.prop(self, "base")
        row = layout.row()
        row.prop(self, "device_menu")
        row.operator("splat_restore.refresh_devices", text="", icon="FILE_REFRESH")
        row = layout.row()
        row.prop(self, "batch_size")
        row.prop(self, "tile")
        row = layout.row()
        row.prop(self, "min_face")
        row.prop(self, "compile")
        row = layout.row()
        row.prop(self, "startup_timeout")
        row.prop(self, "stall_timeout")
        row = layout.row()
        row.label(text=f"Engine: {MANAGER.status}")
        row.operator("splat_restore.stop_engine")
        if MANAGER.last_error:
            layout.label(text=MANAGER.last_error.splitlines()[0], icon="ERROR")


class SPLATRESTORE_OT_refresh_devices(bpy.types.Operator):
    """Ask the engine which devices it can use (GPUs with their memory)"""
    bl_idname = "splat_restore.refresh_devices"
    bl_label = "Refresh Devices"

    def execute(self, context):
        try:
            DeviceMenu.listed = devices.list_devices(engine_settings(context).python)
        except ValueError as e:
            self.report({"ERROR"}, f"Splat Restore: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Splat Restore: {len(DeviceMenu.listed)} devices")
        return {"FINISHED"}


def preferences(context=None):
    return (context or bpy.context).preferences.addons[__package__].preferences


def engine_settings(context=None) -> EngineSettings:
    prefs = preferences(context)
    python = bpy.path.abspath(prefs.engine_python) if prefs.engine_python \
        else default_engine_python(installed_engine_python(prefs))
    difix = prefs.model == "difix"
    if difix:
        weights = bpy.path.abspath(prefs.difix_weights) if prefs.difix_weights.startswith("//") \
            else prefs.difix_weights
    else:
        weights = bpy.path.abspath(prefs.weights) if prefs.weights else ""
    return EngineSettings(python=python, weights=weights, accept_license=difix and prefs.accept_license,
                          base="" if difix else prefs.base, device=prefs.device or "auto", batch_size=prefs.batch_size,
                          tile=prefs.tile, min_face=prefs.min_face, compile=prefs.compile,
                          startup_timeout=prefs.startup_timeout, stall_timeout=prefs.stall_timeout,
                          env=engine_env(prefs))


def engine_env(prefs) -> dict:
    """What the engine's environment gets: the chosen Hugging Face cache, and no hub access at all (restores read
    the cache only; Fetch is the one that goes online)."""
    return {**hf_home_env(models_box.hf_home(prefs)), "HF_HUB_OFFLINE": "1"}


CLASSES = (SPLATRESTORE_AP_preferences, SPLATRESTORE_OT_refresh_devices)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    _register_classes()
    models_box.register()


def unregister():
    models_box.unregister()
    _unregister_classes()
