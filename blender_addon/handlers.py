"""Render handlers for "Restore Every Frame": queue each written frame, drain and report when the render ends."""
import sys

import bpy
from bpy.app.handlers import persistent

from .exit_status import FAILURES, fail_on_errors
from .frame_queue import FrameQueue
from .output_paths import newest_existing
from .preferences import engine_settings
from .properties import reference_photo
from .state import MANAGER, RenderState

# scene-linear float formats: the model works on display-referred sRGB (see README, "Float / EXR input")
FLOAT_FORMATS = {"OPEN_EXR", "OPEN_EXR_MULTILAYER", "HDR"}


def _log(text):
    print(text, file=sys.stderr, flush=True)


def _failed(scene, summary: str) -> None:
    """A farm (blender -b) must see it: the process will exit non-zero unless the scene or $ENV opts out."""
    if bpy.app.background and fail_on_errors(scene.splat_restore.fail_on_errors):
        FAILURES.record(summary)


@persistent
def on_render_init(scene, *_):
    RenderState.queue = None
    settings = getattr(scene, "splat_restore", None)
    if settings is None or not settings.auto_restore:
        return
    fmt = scene.render.image_settings.file_format
    try:
        if fmt in FLOAT_FORMATS:
            raise ValueError(f"{fmt} frames are not restored (scene-linear float; the restorer works on "
                             f"display-referred sRGB). Render PNG or TIFF, 8 or 16 bit")
        RenderState.queue = FrameQueue(MANAGER, engine_settings(), faces=settings.faces, in_place=settings.in_place,
                                       folder=settings.folder, reference=reference_photo(scene),
                                       temporal=settings.temporal)  # each written frame sent numbered
    except ValueError as e:  # refused before the first frame, so nothing is written anywhere
        RenderState.last_report = f"Splat Restore: {e}"
        _log(RenderState.last_report)
        _failed(scene, RenderState.last_report)


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
        queue.record_missing(render.filepath, "cannot find the frame Blender just wrote")
        return
    queue.submit(frame)


def _finish(scene, cancelled: bool):
    queue, RenderState.queue = RenderState.queue, None
    if queue is None:
        return
    if cancelled:
        queue.cancel()
    report = queue.drain()
    RenderState.last_report = report.summary()
    _log(RenderState.last_report)
    if report.failed:
        _failed(scene, RenderState.last_report)


@persistent
def on_render_complete(scene, *_):
    _finish(scene, cancelled=False)


@persistent
def on_render_cancel(scene, *_):
    _finish(scene, cancelled=True)


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
