"""Render handlers for "Restore Every Frame": queue each written frame, drain and report when the render ends."""
import sys

import bpy
from bpy.app.handlers import persistent

from .frame_queue import FrameQueue, newest_existing, restored_path
from .preferences import engine_settings
from .state import MANAGER, RenderState

# scene-linear float formats: the model works on display-referred sRGB (see README, "Float / EXR input")
FLOAT_FORMATS = {"OPEN_EXR", "OPEN_EXR_MULTILAYER", "HDR"}


def _log(text):
    print(text, file=sys.stderr, flush=True)


@persistent
def on_render_init(scene, *_):
    RenderState.queue, RenderState.refusal = None, ""
    settings = getattr(scene, "splat_restore", None)
    if settings is None or not settings.auto_restore:
        return
    fmt = scene.render.image_settings.file_format
    if fmt in FLOAT_FORMATS:
        RenderState.refusal = (f"Splat Restore: {fmt} frames are not restored (scene-linear float; the restorer "
                               f"works on display-referred sRGB). Render PNG or TIFF, 8 or 16 bit")
        RenderState.last_report = RenderState.refusal
        _log(RenderState.refusal)
        return
    RenderState.queue = FrameQueue(MANAGER, engine_settings(), faces=scene.splat_restore.faces,
                                   temporal=scene.splat_restore.temporal)  # each written frame sent numbered


@persistent
def on_render_write(scene, *_):
    queue = RenderState.queue
    if queue is None:
        return
    render = scene.render
    still = bpy.path.abspath(render.filepath)
    if render.use_file_extension and not still.lower().endswith(render.file_extension.lower()):
        still += render.file_extension
    frame = newest_existing([render.frame_path(frame=scene.frame_current), still])
    if frame is None:
        _log(f"Splat Restore: cannot find the frame Blender just wrote ({render.filepath})")
        return
    settings = scene.splat_restore
    queue.submit(frame, restored_path(frame, settings.in_place, settings.folder))


def _finish(cancelled: bool):
    queue, RenderState.queue = RenderState.queue, None
    if queue is None:
        return
    if cancelled:
        queue.cancel()
    RenderState.last_report = queue.drain().summary()
    _log(RenderState.last_report)


@persistent
def on_render_complete(scene, *_):
    _finish(cancelled=False)


@persistent
def on_render_cancel(scene, *_):
    _finish(cancelled=True)


HANDLERS = [("render_init", on_render_init), ("render_write", on_render_write),
            ("render_complete", on_render_complete), ("render_cancel", on_render_cancel)]


def register():
    for name, fn in HANDLERS:
        getattr(bpy.app.handlers, name).append(fn)


def unregister():
    for name, fn in HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if fn in handlers:
            handlers.remove(fn)
