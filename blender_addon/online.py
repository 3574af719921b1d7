"""Blender's *Allow Online Access* preference, asked before anything goes online (Install Engine's pip, Fetch's
hub downloads): extensions must, or Blender's extension platform refuses them. Restores never go online."""
import bpy

WHERE = "Preferences > System > Network > Allow Online Access"


def refusal(what: str) -> str:
    """"" when online access is allowed, else why `what` cannot run and where to turn it on."""
    if bpy.app.online_access:
        return ""
    if bpy.app.online_access_override:  # started with --offline-mode: the preference cannot change that
        return f"{what} needs the internet, and Blender was started with --offline-mode: start it without"
    return f"{what} needs the internet, and Blender's online access is off: turn it on in {WHERE}"
