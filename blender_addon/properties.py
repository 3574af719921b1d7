"""Per-scene settings: scene.splat_restore (and its training_pairs)."""
import bpy


class SplatRestorePairsSettings(bpy.types.PropertyGroup):
    """Make Training Pairs: scene.splat_restore.training_pairs."""
    photos_dir: bpy.props.StringProperty(
        name="Photos", subtype="DIR_PATH",
        description="The capture photos: a camera takes the photo whose file name without extension is the "
                    "camera's name, ignoring case (cam_012 takes cam_012.jpg)")
    output_dir: bpy.props.StringProperty(
        name="Output Folder", subtype="DIR_PATH",
        description="The pairs folder: degraded/NAME.png (the render), clean/NAME.png (the photo), manifest.jsonl")
    cameras: bpy.props.EnumProperty(
        name="Cameras", default="ALL",
        items=[("ALL", "All", "Every camera in the scene"), ("SELECTED", "Selected", "The selected cameras")])
    holdout: bpy.props.IntProperty(
        name="Hold Out Every", default=8, min=2, soft_max=50,
        description="In name order, the 1st, (N+1)th, (2N+1)th... camera goes to the test split, to measure the "
                    "trained restorer on views it never learned from (at least one when there are two cameras)")


class SplatRestoreSceneSettings(bpy.types.PropertyGroup):
    training_pairs: bpy.props.PointerProperty(type=SplatRestorePairsSettings)
    auto_restore: bpy.props.BoolProperty(
        name="Restore Every Frame", default=False,
        description="Restore each frame Blender writes during a render (F12 with write, Ctrl-F12, blender -b -a)")
    in_place: bpy.props.BoolProperty(
        name="In Place", default=False, description="Replace the written frames instead of writing copies")
    folder: bpy.props.StringProperty(
        name="Folder", default="restored",
        description="Subfolder of the output folder for restored frames (relative; not empty, not '..')")
    fail_on_errors: bpy.props.BoolProperty(
        name="Fail Render on Restore Errors", default=True,
        description="In background renders (blender -b, render farms), exit with code 1 when frames could not "
                    "be restored; $SPLAT_RESTORE_FAIL_ON_ERRORS=0 or 1 overrides this")
    temporal: bpy.props.BoolProperty(
        name="Temporal smoothing", default=True,
        description="Restore Every Frame and Restore Folder: fuse each frame of an animation with the one before "
                    "along the motion, so the restored frames do not flicker (after a cut, a frame is restored on "
                    "its own)")
    faces: bpy.props.EnumProperty(
        name="Faces", default="auto",
        items=[("auto", "Faces", "In frames larger than the model (512 px), restore each face and leave the rest "
                                 "untouched; smaller frames are restored whole"),
               ("off", "Whole Frame", "Restore the whole frame, tiled at the model's size"),
               ("only-crops", "Face Crops", "Write each restored face crop (NAME_face0.png, ...) instead of the "
                                            "frame, to inspect them")],
        description="How frames are restored")
    reference_photo: bpy.props.StringProperty(
        name="Reference Photo", subtype="FILE_PATH",
        description="A sharp photo of the person (one the avatar was built from), given beside every frame to "
                    "weights that take one (NVIDIA Difix-ref, or weights trained with --reference), so restored "
                    "detail follows the real face. Used by Restore Render, Restore Every Frame and Restore Folder")


def reference_photo(scene) -> str:
    """The scene's Reference Photo as a path the engine can open ("" for none): a blend-relative // path resolved."""
    photo = scene.splat_restore.reference_photo.strip()
    return bpy.path.abspath(photo) if photo else ""


def register():
    bpy.utils.register_class(SplatRestorePairsSettings)
    bpy.utils.register_class(SplatRestoreSceneSettings)
    bpy.types.Scene.splat_restore = bpy.props.PointerProperty(type=SplatRestoreSceneSettings)


def unregister():
    del bpy.types.Scene.splat_restore
    bpy.utils.unregister_class(SplatRestoreSceneSettings)
    bpy.utils.unregister_class(SplatRestorePairsSettings)
