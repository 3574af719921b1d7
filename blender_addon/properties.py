"""Per-scene settings: scene.splat_restore."""
import bpy


class SplatRestoreSceneSettings(bpy.types.PropertyGroup):
    auto_restore: bpy.props.BoolProperty(
        name="Restore Every Frame", default=False,
        description="Restore each frame Blender writes during a render (F12 with write, Ctrl-F12, blender -b -a)")
    in_place: bpy.props.BoolProperty(
        name="In Place", default=False, description="Replace the written frames instead of writing copies")
    folder: bpy.props.StringProperty(
        name="Folder", default="restored", description="Sibling folder of the output for restored frames")


def register():
    bpy.utils.register_class(SplatRestoreSceneSettings)
    bpy.types.Scene.splat_restore = bpy.props.PointerProperty(type=SplatRestoreSceneSettings)


def unregister():
    del bpy.types.Scene.splat_restore
    bpy.utils.unregister_class(SplatRestoreSceneSettings)
