"""Splat Restore for Blender. bpy is imported only inside register(), so the bpy-free parts (engine_link: the
protocol and the engine client) can be imported by the engine and by plain tests."""
