"""Operators: Restore Render, Restore Folder, Stop Engine. Interactive runs are modal (progress, Esc cancels);
in background mode (blender -b) they block, because bpy.app.timers and modal timers never fire there."""
import shutil
import tempfile
from pathlib import Path

import bpy

from .engine_job import EngineJob
from .engine_link.client import EngineError
from .folder_restore import folder_items, sequence_items
from .preferences import engine_settings
from .properties import reference_photo
from .state import MANAGER, RenderState

RESTORED_IMAGE = "Restored Render"


class _ModalEngineOperator:
    """Shared modal loop: subclasses implement prepare() -> (items, options), and finish(context, result); cleanup()
    runs once the run is over, however it ended (restored, failed, cancelled, or refused while preparing)."""
    _timer = None
    _job = None

    def cleanup(self):
        pass

    def execute(self, context):
        restore = self._prepare_or_report(context)
        if restore is None:
            return {"CANCELLED"}
        job = EngineJob(engine_settings(context), *restore, reference_photo(context.scene))
        job.run()
        return self._conclude(context, job)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        restore = self._prepare_or_report(context)
        if restore is None:
            return {"CANCELLED"}
        self._job = EngineJob(engine_settings(context), *restore, reference_photo(context.scene))
        self._job.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC":
            job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        done, total = job.progress
        if total:
            context.window_manager.progress_update(int(100 * done / total))
            context.workspace.status_text_set(f"Splat Restore: {done}/{total} (Esc cancels)")
        if not job.done:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        context.workspace.status_text_set(None)
        return self._conclude(context, job)

    def _prepare_or_report(self, context):
        try:
            return self.prepare(context)
        except (ValueError, OSError, RuntimeError) as e:
            self.cleanup()
            self.report({"ERROR"}, f"Splat Restore: {e}")
            return None

    def _conclude(self, context, job):
        try:
            if job.error is None:
                return self.finish(context, job.result)
        finally:
            self.cleanup()
        if isinstance(job.error, EngineError) and job.error.code == "cancelled":
            self.report({"WARNING"}, f"Splat Restore: cancelled ({job.error})")
            return {"CANCELLED"}
        self.report({"ERROR"}, f"Splat Restore: {job.error}")
        return {"CANCELLED"}


def save_render_png(scene, path: Path) -> None:
    """The last render as 16-bit PNG with the scene's view transform applied: display-referred sRGB, as the model
    expects. Render Result pixels are not readable from Python; save_render is the way out."""
    result = bpy.data.images.get("Render Result")
    if result is None:
        raise ValueError("there is no render to restore yet: render first (F12)")
    settings = scene.render.image_settings
    saved = (settings.file_format, settings.color_depth, settings.color_mode)
    try:
        settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGBA", "16"
        result.save_render(str(path), scene=scene)
    finally:
        settings.file_format = saved[0]
        settings.color_mode, settings.color_depth = saved[2], saved[1]
    if not path.is_file():
        raise ValueError("the Render Result is empty: render first (F12)")


class SPLATRESTORE_OT_restore_render(_ModalEngineOperator, bpy.types.Operator):
    """Restore the last render and show it as the image "Restored Render\""""
    bl_idname = "splat_restore.restore_render"
    bl_label = "Restore Render"

    def prepare(self, context):
        self._folder = Path(tempfile.mkdtemp(prefix="splat_restore_"))
        self._src, self._dst = self._folder / "render.png", self._folder / "restored.png"
        save_render_png(context.scene, self._src)
        faces = context.scene.splat_restore.faces
        return [(self._src, self._dst)], {"overwrite": True, "faces": faces}

    def finish(self, context, result):
        item = (result.get("items") or [{}])[0]
        images = [(f"{RESTORED_IMAGE} Face {k}", path) for k, path in enumerate(item.get("crops", []))]
        if not images and self._dst.is_file():  # only-crops mode writes crops, not the frame
            images = [(RESTORED_IMAGE, str(self._dst))]
        shown = None
        for name, path in images:
            old = bpy.data.images.get(name)
            if old is not None:
                bpy.data.images.remove(old)
            image = bpy.data.images.load(path, check_existing=False)
            image.name = name
            image.pack()  # the result stays with the .blend; its temporary file goes in cleanup()
            shown = shown or image
        screen = context.screen
        for area in (screen.areas if screen and shown else []):
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = shown
                break
        faces = len(item.get("faces", []))
        detail = item.get("note") or (f"{faces} face{'s' if faces != 1 else ''}" if item.get("mode") == "faces"
                                      else "whole frame")
        self.report({"INFO"}, f"Splat Restore: render restored ({detail})")
        return {"FINISHED"}

    def cleanup(self):
        """The render and its restored copy, at full size: a folder left behind per click would fill the disk."""
        folder = getattr(self, "_folder", None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


class SPLATRESTORE_OT_restore_folder(_ModalEngineOperator, bpy.types.Operator):
    """Restore every saved render in a folder"""
    bl_idname = "splat_restore.restore_folder"
    bl_label = "Restore Folder"

    # not remembered between calls: the panel's button must open the picker every time
    input_dir: bpy.props.StringProperty(name="Input Folder", subtype="DIR_PATH", options={"SKIP_SAVE"})
    output_dir: bpy.props.StringProperty(name="Output Folder", subtype="DIR_PATH",
                                         description="Empty: a 'restored' folder inside the input folder")
    recursive: bpy.props.BoolProperty(name="Recursive", default=False)
    # every shot numbers its frames 0001.png...: a second shot restored into the same folder would replace the
    # first's. Not remembered: each call starts at Skip, so one Overwrite cannot silently carry over to the next
    existing: bpy.props.EnumProperty(
        name="Existing Files", default="skip", options={"SKIP_SAVE"},
        description="Restored files already in the output folder",
        items=[("skip", "Skip", "Keep them and restore only the renders that have no restored file yet"),
               ("overwrite", "Overwrite", "Replace them with new restores")])
    # filled by the folder picker (Blender's file browser writes the chosen folder into `directory`)
    directory: bpy.props.StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def draw(self, context):  # the picker's side panel: the chosen folder is the input
        self.layout.prop(self, "output_dir")
        self.layout.prop(self, "recursive")
        self.layout.prop(self, "existing")

    def invoke(self, context, event):
        if self.input_dir or bpy.app.background:
            return super().invoke(context, event)
        self._picked = True
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if not self.input_dir and self.directory:
            self.input_dir = self.directory
        if getattr(self, "_picked", False) and not bpy.app.background:  # back from the picker: progress, Esc
            self._picked = False
            return super().invoke(context, None)
        return super().execute(context)

    def prepare(self, context):
        if not self.input_dir.strip():
            raise ValueError("no input folder chosen: pick the folder of saved renders (Restore Folder in the "
                             "panel opens a folder browser)")
        items = folder_items(bpy.path.abspath(self.input_dir),
                             bpy.path.abspath(self.output_dir) if self.output_dir else None, self.recursive)
        for _, out in items:
            out.parent.mkdir(parents=True, exist_ok=True)
        self._count = len(items)
        faces = context.scene.splat_restore.faces
        if context.scene.splat_restore.temporal:
            items = sequence_items(items)
        overwrite = self.existing == "overwrite"
        return items, {"overwrite": overwrite, "skip_existing": not overwrite, "faces": faces}

    def finish(self, context, result):
        items = result.get("items", [])
        no_face = sum(1 for i in items if i.get("note"))
        faces = sum(len(i.get("faces", [])) for i in items)
        skipped = result.get("skipped", 0)
        extra = f", {skipped} skipped: already restored (Existing Files: Overwrite replaces them)" if skipped else ""
        extra += f" ({faces} faces, {no_face} without a face left unchanged)" if faces or no_face else ""
        RenderState.last_report = f"Splat Restore: {result.get('restored', 0)} of {self._count} renders restored{extra}"
        self.report({"INFO"}, RenderState.last_report)
        return {"FINISHED"}


class SPLATRESTORE_OT_stop_engine(bpy.types.Operator):
    """Stop the engine process and free its GPU memory"""
    bl_idname = "splat_restore.stop_engine"
    bl_label = "Stop Engine"

    def execute(self, context):
        MANAGER.stop()
        return {"FINISHED"}


CLASSES = (SPLATRESTORE_OT_restore_render, SPLATRESTORE_OT_restore_folder, SPLATRESTORE_OT_stop_engine)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
