"""Decoding the capture photos with the engine's Python (`python -m engine import-photos`), for Make Training Pairs.

Blender's Python cannot do it right (no Pillow; its loader ignores EXIF orientation and linearises 16-bit files), so
the photos go through the engine's interpreter, the one restores use. The command prints one JSON line per photo
as it finishes; a reader thread collects them so a modal operator can show progress and Esc can stop the process.
No bpy.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from collections import deque
from pathlib import Path

PHOTO_LIST = "photos.txt"


class PhotoImport:
    """One run of import-photos over `photos`, writing `staging/photos/<stem>.png`."""

    def __init__(self, python: str, photos: list[Path], staging: Path, cwd: str | None = None):
        self.python, self.photos, self.staging, self.cwd = python, photos, staging, cwd
        self.out = staging / "photos"
        self.records: dict[str, dict] = {}  # by source path as given
        self.process: subprocess.Popen | None = None
        self._stderr: deque = deque(maxlen=20)
        self._threads: list[threading.Thread] = []
        self.cancelled = False

    def command(self) -> list[str]:
        return [self.python, "-m", "engine", "import-photos", "--from-list", str(self.staging / PHOTO_LIST),
                "--out", str(self.out), "--json"]

    def start(self) -> None:
        if not self.python or not os.path.isfile(self.python):
            raise ValueError(f"engine interpreter not found: {self.python!r}; set Engine Python in the add-on's "
                             f"preferences (the photos are decoded by the engine's Python)")
        (self.staging / PHOTO_LIST).write_text("".join(f"{p}\n" for p in self.photos), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
        env["PYTHONUNBUFFERED"] = "1"
        try:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL, env=env, cwd=self.cwd, encoding="utf-8",
                                            errors="replace", creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except OSError as e:
            raise ValueError(f"could not start {self.python} to decode the photos: {e}") from None
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self._stderr.append(line.rstrip())
                continue
            if isinstance(record, dict) and "source" in record:
                self.records[record["source"]] = record

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line.rstrip())

    @property
    def progress(self) -> tuple[int, int]:
        return len(self.records), len(self.photos)

    @property
    def done(self) -> bool:
        return self.process is not None and self.process.poll() is not None and \
            not any(t.is_alive() for t in self._threads)

    def wait(self) -> None:
        self.process.wait()
        for t in self._threads:
            t.join()

    def cancel(self) -> None:
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.wait()

    def result(self) -> dict[Path, dict]:
        """{photo: record} once done. A run that could not decode at all (wrong interpreter, no engine,
        a crash) raises ValueError with the command's last words; a photo that failed has its own record."""
        code = self.process.returncode
        tail = "\n".join(self._stderr)
        missing = [str(p) for p in self.photos if str(p) not in self.records]
        if code in (0, 1) and not missing:  # 1: some photos failed, each with its record
            return {p: self.records[str(p)] for p in self.photos}
        if "No module named engine" in tail or "invalid choice: 'import-photos'" in tail:
            raise ValueError(f"{self.python} has no Splat Restore engine that decodes photos (`engine "
                             f"import-photos`): run Install Engine again, or set Engine Python to the engine's "
                             f"interpreter")
        last = tail.splitlines()[-1] if tail else "no output"
        raise ValueError(f"decoding the photos failed ({self.python} -m engine import-photos, exit {code}, "
                         f"{len(missing)} of {len(self.photos)} photos unreported): {last}")
