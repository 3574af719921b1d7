"""The add-on's session state: one engine for the whole Blender session, and the frame queue of a running render."""
from .engine_manager import EngineManager

MANAGER = EngineManager()


class RenderState:
    queue = None  # FrameQueue while an auto-restoring render runs
    last_report = ""  # the panel shows it: the last render's restores, or the last Restore Folder
