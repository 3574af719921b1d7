"""Panels: Render Properties > Splat Restore (with its Training Pairs section), and the Image Editor sidebar."""
import textwrap
from pathlib import Path

import bpy

from .engine_setup import InstallState
from .output_paths import check_restored_folder
from .preferences import engine_settings
from .reference_photo import panel_note, weights_take_reference
from .state import MANAGER, RenderState


def _draw(layout, context):
    settings = context.scene.splat_restore
    layout.operator("splat_restore.restore_render", icon="IMAGE")
    layout.operator("splat_restore.restore_folder", icon="FILE_FOLDER")
    layout.prop(settings, "faces")
    layout.prop(settings, "reference_photo")
    takes = weights_take_reference(engine_settings(context).weights, MANAGER.client)
    note = panel_note(settings.reference_photo, takes)
    if note:
        layout.label(text=note[0], icon=note[1])
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


class SPLATRESTORE_PT_training_pairs(bpy.types.Panel):
    """Render/photo pairs from the capture cameras, to fine-tune the restorer on this avatar."""
    bl_label = "Training Pairs"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_parent_id = "SPLATRESTORE_PT_render"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        from .pairs_operator import PairsState
        from .training_pairs import MANIFEST

        settings = context.scene.splat_restore.training_pairs
        layout = self.layout
        layout.prop(settings, "photos_dir")
        layout.prop(settings, "output_dir")
        row = layout.row()
        row.prop(settings, "cameras", expand=True)
        layout.prop(settings, "holdout")
        layout.operator("splat_restore.make_training_pairs", icon="RENDER_STILL")
        out = bpy.path.abspath(settings.output_dir) if settings.output_dir.strip() else ""
        if out and (Path(out) / MANIFEST).is_file():
            layout.operator("splat_restore.make_training_pairs", text="Replace Existing Pairs",
                            icon="FILE_REFRESH").overwrite = True
        if PairsState.last_report:
            for line in textwrap.wrap(PairsState.last_report, 90)[:6]:
                layout.label(text=line)


CLASSES = (SPLATRESTORE_PT_render, SPLATRESTORE_PT_image, SPLATRESTORE_PT_training_pairs)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
