"""A small Cycles scene (CPU, 32 px, 4 samples: well under a second a frame) whose frames differ."""
import bpy


def build_scene(res=32, frames=(1, 3)):
    scene = bpy.context.scene
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = res
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_depth = "8"
    scene.render.image_settings.color_mode = "RGBA"
    scene.frame_start, scene.frame_end = frames
    bpy.ops.mesh.primitive_plane_add(size=4, location=(0, 0, -1))
    bpy.ops.mesh.primitive_cube_add(size=1, location=(0, 0, 0))
    cube = bpy.context.active_object
    bpy.ops.object.light_add(type="SUN", location=(2, 2, 4))
    bpy.ops.object.camera_add(location=(0, -4, 1.0), rotation=(1.35, 0, 0))
    scene.camera = bpy.context.active_object
    for f in range(frames[0], frames[1] + 1):
        cube.rotation_euler = (0, 0, 0.4 * f)
        cube.keyframe_insert("rotation_euler", frame=f)
    world = bpy.data.worlds.new("w")
    world.color = (0.2, 0.3, 0.4)
    scene.world = world
    scene.splat_restore.auto_restore = False
    scene.splat_restore.in_place = False
    scene.splat_restore.temporal = True
    scene.splat_restore.faces = "auto"  # a test that sets Face Crops must not turn the next one's restores into crops
    scene.frame_set(frames[0])
    return scene


def pixels(path_or_image):
    import numpy as np

    img = path_or_image if isinstance(path_or_image, bpy.types.Image) else \
        bpy.data.images.load(str(path_or_image), check_existing=False)
    a = np.empty(len(img.pixels), np.float32)
    img.pixels.foreach_get(a)
    out = a.reshape(img.size[1], img.size[0], img.channels)
    if not isinstance(path_or_image, bpy.types.Image):
        bpy.data.images.remove(img)
    return out
