"""The engine process of the Blender session: which interpreter runs it, and when it is (re)started. No bpy."""
from __future__ import annotations

import os
from pathlib import Path

from .engine_link.client import EngineClient, EngineError, EngineSettings, find_venv_python


def default_engine_python(installed: str = "") -> str:
    """The engine interpreter when the preferences name none: $SPLAT_RESTORE_ENGINE_PYTHON (farms, development),
    else the one Install Engine made (`installed`), else the checkout's .venv."""
    env = os.environ.get("SPLAT_RESTORE_ENGINE_PYTHON")
    if env or installed:
        return env or installed
    found = find_venv_python(Path(__file__).resolve().parents[1])
    return str(found) if found else ""


class EngineManager:
    """One engine process for the Blender session; restarted when settings change or after a crash."""

    def __init__(self):
        self.client: EngineClient | None = None
        self.settings: EngineSettings | None = None
        self.last_error = ""
        self.starting = False

    @property
    def status(self) -> str:
        if self.starting:
            return "starting"
        if self.client is not None and self.client.alive:
            state = "busy" if self.client._pending else "ready"
            return f"{state}, compiling…" if self.client.compiling else state
        return "error" if self.last_error else "stopped"

    def client_for(self, settings: EngineSettings) -> EngineClient:
        if self.client is not None and settings != self.settings:
            self.stop()
        elif self.client is not None:  # same engine; the time limits may have changed, and apply from now
            self.settings = self.client.settings = settings
        if self.client is None or not self.client.alive:
            self.settings = settings
            self.client = EngineClient(settings)
            self.starting = True
            try:
                self.client.start()
                self.last_error = ""
            except EngineError as e:
                self.last_error = str(e)
                raise
            finally:
                self.starting = False
        return self.client

    def stop(self) -> None:
        if self.client is not None:
            self.client.shutdown()
        self.client = None
