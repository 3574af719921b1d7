"""Splat Restore for Blender: restore renders of Gaussian-splatting avatars through a local engine process.

bpy is imported only by the modules that register() loads, so the bpy-free parts (engine_link: the protocol and the
engine client; frame_queue, engine_manager, output_paths, folder_restore, engine_install, training_pairs,
photo_import) can be imported by the engine and by plain tests.
"""

_MODULES = ("preferences", "engine_setup", "properties", "operators", "pairs_operator", "handlers", "ui")


def _modules():
    import importlib

    return [importlib.import_module(f"{__package__}.{name}") for name in _MODULES]


def register():
    for module in _modules():
        module.register()


def unregister():
    from .state import MANAGER

    for module in reversed(_modules()):
        module.unregister()
    MANAGER.stop()  # frees the GPU memory the engine holds
