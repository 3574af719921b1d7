"""The preferences' Models box: which models the engine can use, fetched from the Hugging Face hub with progress,
Cancel and resume, or deleted; the cache folder and the access token.

A fetch is a background process (fetch_job.FetchJob) that an app timer polls (`follow_fetch`), redrawing the
preferences with bytes done of total and the rate: Blender stays usable, and the timer survives the preferences
window being closed. Timers never fire in background mode: a script passes wait=True, or calls `follow_fetch`.
"""
import os
from pathlib import Path

import bpy

from . import online
from .engine_link.hub_cache import delete_model, hub_cache, model_state, with_hf_home
from .engine_link.licenses import NVIDIA_DIFIX
from .engine_setup import engine_folder
from .fetch_job import FetchJob, fetch_env
from .model_list import BY_ID, HUB_MODELS, read_checkpoint
from .state import MANAGER

LOG_NAME = "fetch.log"


class FetchState:
    job = None  # the FetchJob while one runs
    message = ""  # how the last one ended, shown until the next
    failed = False


def _prefs(context=None):
    return (context or bpy.context).preferences.addons[__package__].preferences


def hf_home(prefs) -> str:
    return bpy.path.abspath(prefs.hf_home) if prefs.hf_home else ""


def cache_folder(prefs) -> Path:
    """The hub cache every engine process of this add-on uses."""
    return hub_cache(with_hf_home(os.environ, hf_home(prefs)))


def fetch_log(prefs) -> Path:
    return engine_folder(prefs) / LOG_NAME


def fetch_refusal(model, prefs, python: str) -> str:
    """"" when `model` may be fetched now, else why not."""
    refusal = online.refusal(f"Fetching {model.label}")
    if refusal:
        return refusal
    if model.needs_acceptance and not prefs.accept_license:
        return (f"{model.label} is under the {model.license.name} ({model.license.terms}): read it "
                f"({model.license.url}) and tick its acceptance box in the Models box before fetching")
    if FetchState.job is not None:
        return f"a fetch of {FetchState.job.repo_id} is running: wait for it or cancel it"
    if not python or not Path(python).is_file():
        return "no engine to fetch with: Install Engine first (or set Engine Python)"
    return ""


class SPLATRESTORE_OT_fetch_model(bpy.types.Operator):
    """Download this model from the Hugging Face hub into the cache (continues an interrupted download)"""
    bl_idname = "splat_restore.fetch_model"
    bl_label = "Fetch"

    model_id: bpy.props.StringProperty(name="Model", options={"SKIP_SAVE"})
    wait: bpy.props.BoolProperty(name="Wait", options={"SKIP_SAVE"},
                                 description="Block until the fetch ends (scripts in background mode)")

    def execute(self, context):
        from .preferences import engine_settings

        model, prefs = BY_ID.get(self.model_id), _prefs(context)
        if model is None:
            self.report({"ERROR"}, f"Splat Restore: unknown model {self.model_id!r}; known: {', '.join(BY_ID)}")
            return {"CANCELLED"}
        python = engine_settings(context).python
        refusal = fetch_refusal(model, prefs, python)
        if refusal:
            self.report({"ERROR"}, f"Splat Restore: {refusal}")
            return {"CANCELLED"}
        job = FetchJob(python, model.id, fetch_env(hf_home(prefs), prefs.hf_token), fetch_log(prefs))
        FetchState.job, FetchState.message, FetchState.failed = job, "", False
        job.start()
        if self.wait:
            job.wait()
            return _conclude(self)
        if not bpy.app.background:
            bpy.app.timers.register(follow_fetch, first_interval=0.25)
        self.report({"INFO"}, f"Splat Restore: fetching {model.id}; progress in the add-on's preferences")
        return {"FINISHED"}


def _conclude(operator=None):
    """How the fetch ended, into FetchState (and the operator's report); the job is forgotten."""
    job = FetchState.job
    FetchState.job, FetchState.message, FetchState.failed = None, job.message, job.outcome == "failed"
    message = f"Splat Restore: {job.message}"
    print(message, flush=True)
    if operator is not None:
        operator.report({"ERROR"} if FetchState.failed else {"INFO"}, message)
    return {"CANCELLED"} if FetchState.failed else {"FINISHED"}


def follow_fetch():
    """The app timer while a fetch runs: redraw its progress; once it ends, show how. Tests call it as the timer
    would (timers never fire in background mode)."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()
    job = FetchState.job
    if job is None:
        return None
    if not job.poll():
        return 0.25
    _conclude()
    return None


class SPLATRESTORE_OT_cancel_fetch(bpy.types.Operator):
    """Stop the download: the model stays unusable until a Fetch completes; what arrived is kept for it"""
    bl_idname = "splat_restore.cancel_fetch"
    bl_label = "Cancel"

    def execute(self, context):
        if FetchState.job is None:
            self.report({"WARNING"}, "Splat Restore: no fetch is running")
            return {"CANCELLED"}
        FetchState.job.cancel()
        return {"FINISHED"}


class SPLATRESTORE_OT_delete_model(bpy.types.Operator):
    """Delete this model from the Hugging Face cache (Fetch brings it back)"""
    bl_idname = "splat_restore.delete_model"
    bl_label = "Delete"

    model_id: bpy.props.StringProperty(name="Model", options={"SKIP_SAVE"})

    def execute(self, context):
        if self.model_id not in BY_ID:
            self.report({"ERROR"}, f"Splat Restore: unknown model {self.model_id!r}")
            return {"CANCELLED"}
        if FetchState.job is not None and FetchState.job.repo_id == self.model_id:
            self.report({"ERROR"}, f"Splat Restore: {self.model_id} is being fetched: cancel that first")
            return {"CANCELLED"}
        MANAGER.stop()  # an engine using it holds its files (Windows refuses to delete them)
        try:
            delete_model(cache_folder(_prefs(context)), self.model_id)
        except OSError as e:
            self.report({"ERROR"}, f"Splat Restore: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Splat Restore: {self.model_id} deleted from {cache_folder(_prefs(context))}")
        return {"FINISHED"}


def _draw_licence(box, prefs):
    box.label(text=f"Difix and Difix-ref: {NVIDIA_DIFIX.name}, non-commercial use only (research or evaluation)",
              icon="INFO")
    row = box.row()
    row.operator("wm.url_open", text="Read the licence").url = NVIDIA_DIFIX.url
    row.prop(prefs, "accept_license", text="I accept it")
    if not prefs.accept_license:
        box.label(text="Not accepted: Difix cannot be fetched, and the engine refuses it")


def _draw_model(box, prefs, model, cache: Path, allowed: bool):
    col = box.column(align=True)
    col.label(text=f"{model.label} ({model.id}): {model.use}")
    job = FetchState.job
    if job is not None and job.repo_id == model.id:
        row = col.row()
        row.progress(factor=job.fraction, type="BAR", text=job.describe())
        row.operator("splat_restore.cancel_fetch", icon="CANCEL")
        return
    state = model_state(cache, model.id)
    col.label(text=state.describe(), icon="CHECKMARK" if state.present else "DOT")
    col.label(text=f"Licence: {model.terms}")
    row = col.row()
    sub = row.row()
    sub.enabled = allowed and job is None and (prefs.accept_license or not model.needs_acceptance)
    text = "Fetch Again" if state.present else "Continue Fetch" if state.interrupted else "Fetch"
    sub.operator("splat_restore.fetch_model", text=text, icon="IMPORT").model_id = model.id
    if state.bytes_on_disk:
        row.operator("splat_restore.delete_model", icon="TRASH").model_id = model.id


def _draw_checkpoint(box, prefs, cache: Path):
    if not prefs.weights:
        return
    ck = read_checkpoint(bpy.path.abspath(prefs.weights))
    col = box.column(align=True)
    col.label(text=f"My checkpoint: {ck.path.name}")
    if not ck.exists:
        col.label(text=f"Missing: {ck.path}", icon="ERROR")
        return
    col.label(text=f"Present, {ck.bytes / 1e6:.1f} MB; {ck.problem or 'licence: ' + (ck.license or 'your own')}",
              icon="CHECKMARK" if not ck.problem else "ERROR")
    if ck.base in BY_ID:
        base = "present" if model_state(cache, ck.base).present else "not fetched: Fetch it above"
        col.label(text=f"Needs the base {ck.base}: {base}")
    elif ck.base:
        col.label(text=f"Needs the base {ck.base}")


def draw_models_box(layout, prefs):
    box = layout.box()
    box.label(text="Models", icon="FILE_BLEND")
    refusal = online.refusal("Fetch")
    if refusal:
        box.label(text=refusal, icon="ERROR")
    cache = cache_folder(prefs)
    _draw_licence(box, prefs)
    for model in HUB_MODELS:
        _draw_model(box, prefs, model, cache, not refusal)
    _draw_checkpoint(box, prefs, cache)
    if FetchState.message:
        box.label(text=FetchState.message[:300], icon="ERROR" if FetchState.failed else "INFO")
    box.prop(prefs, "hf_home")
    box.label(text=f"Cache: {cache}")
    box.prop(prefs, "hf_token")


CLASSES = (SPLATRESTORE_OT_fetch_model, SPLATRESTORE_OT_cancel_fetch, SPLATRESTORE_OT_delete_model)

register, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def unregister():
    if bpy.app.timers.is_registered(follow_fetch):
        bpy.app.timers.unregister(follow_fetch)
    if FetchState.job is not None:  # the add-on is going: its download must not go on unseen
        FetchState.job.cancel()
        FetchState.job = None
    _unregister_classes()
