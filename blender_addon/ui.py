"""Panels: Render Properties > Splat Restore, and the Image Editor sidebar."""
import bpy

from .engine_setup import InstallState
from .output_paths import check_restored_folder
from .state import MANAGER, RenderState


def _draw(layout, context):
    settings = context.scene.splat_restore
    layout.operator("splat_restore.restore_render", icon="IMAGE")
    layout.operator("splat_restore.restore_folder", icon="FILE_FOLDER")
    layout.prop(settings, "faces")
    layout.prop(settings, "temporal")
    layout.prop(settings, "auto_restore")
    sub = layout.column()
    sub.enabled = settings.auto_restore
    sub.prop(settings, "in_place")
    row = sub.row()
    row.enabled = not settings.in_place
    row.prop(settings, "folder")
    if not settings.in_place:
        try:
            check_restored_folder(settings.folder)
        except ValueError as e:
            sub.label(text=str(e), icon="ERROR")
    sub.prop(settings, "fail_on_errors")
    if InstallState.job is not None:
        layout.label(text=f"Engine install: {InstallState.job.phase}...", icon="SORTTIME")
    row = layout.row()
    row.label(text=f"Engine: {MANAGER.status}")
    row.operator("splat_restore.stop_engine", text="", icon="CANCEL")
    if MANAGER.last_error:
        layout.label(text=MANAGER.last_error.splitlines()[0], icon="ERROR")
    if RenderState.last_report:
        layout.label(text=RenderState.last_report, icon="INFO")


class SPLATRESTORE_PT_render(bpy.types.Panel):
    bl_label = "Splat Restore"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"

    def draw(self, context):
        _draw(self.layout, context)


class SPLATRESTORE_PT_image(bpy.types.Panel):
    bl_label = "Splat Restore"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Splat Restore"

    def draw(self, context):
        _draw(self.layout, context)


CLASSES = (SPLATRESTORE_PT_render, SPLATRESTORE_PT_image)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
