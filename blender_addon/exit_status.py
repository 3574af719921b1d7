"""A background render whose restores failed ends with a non-zero exit code, so a render farm sees it. No bpy.

`blender -b scene.blend -a` decides its exit code in C after the last argument (0 unless the render was
interrupted) and nothing in Python can change it. What Python does get is its own finalization: Blender calls
WM_exit, which finalizes Python (running `atexit` callbacks) and then calls exit(code). So a failure is recorded
when the render ends, and an atexit callback ends the process there with EXIT_CODE, after every frame is on disk and
every other argument (more renders, --python scripts) has run. The engine, its stdin closed, exits by itself.
Measured with the bpy module: sys.exit() or os._exit() inside render_complete do set the code, but end the process
right there, so the rest of the script (or of Blender's arguments) never runs; the atexit hook runs after all of it.
"""
from __future__ import annotations

import atexit
import os
import sys

EXIT_CODE = 1
ENV = "SPLAT_RESTORE_FAIL_ON_ERRORS"  # "0": never change the exit code, "1": always, whatever the scene says


def fail_on_errors(scene_setting: bool, environ=os.environ) -> bool:
    value = environ.get(ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return scene_setting


class FailureExit:
    def __init__(self):
        self.failures: list[str] = []
        self._armed = False

    def record(self, summary: str) -> None:
        self.failures.append(summary)
        if not self._armed:
            atexit.register(self._exit)
            self._armed = True

    def clear(self) -> None:
        self.failures.clear()

    def _exit(self) -> None:
        if not self.failures:
            return
        lines = "\n".join(f"  {f}" for f in self.failures)
        print(f"Splat Restore: exiting with code {EXIT_CODE} because restoring failed in {len(self.failures)} "
              f"render(s):\n{lines}\n(to keep the exit code of the render itself: turn off 'Fail Render on "
              f"Restore Errors' in the scene's Splat Restore panel, or set {ENV}=0)", file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(EXIT_CODE)


FAILURES = FailureExit()
