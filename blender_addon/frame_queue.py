"""Frames handed to the engine as Blender writes them, and the engine's lifetime. No bpy: tested with plain pytest.

Each frame is one request, sent the moment Blender has written the file, so restoring overlaps rendering; the engine
batches whatever is queued. If the engine dies, it is restarted once and the unfinished frames are sent again; the
engine writes atomically, so a frame it did not finish is simply absent, never half-written.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .engine_link.client import EngineClient, EngineDied, EngineError, EngineSettings, find_venv_python
from .engine_link.protocol import natural_key

RESTORED_FOLDER = "restored"


def restored_path(frame: str | os.PathLike, in_place: bool = False, folder: str = RESTORED_FOLDER) -> Path:
    """Where a restored frame goes: `<frame dir>/restored/<same name>`, or the frame itself when in place."""
    frame = Path(frame)
    return frame if in_place else frame.parent / folder / frame.name


def newest_existing(candidates) -> Path | None:
    """The file Blender just wrote: render_write does not say whether it wrote an animation frame
    (`frame_path`, numbered) or a still (the output path itself), so take whichever exists and is newest."""
    found = [Path(c) for c in candidates if c and Path(c).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def default_engine_python() -> str:
    """The engine interpreter when none is set: $SPLAT_RESTORE_ENGINE_PYTHON, else the checkout's .venv."""
    env = os.environ.get("SPLAT_RESTORE_ENGINE_PYTHON")
    if env:
        return env
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
            return "busy" if self.client._pending else "ready"
        return "error" if self.last_error else "stopped"

    def client_for(self, settings: EngineSettings, timeout: float = 300.0) -> EngineClient:
        if self.client is not None and settings != self.settings:
            self.stop()
        if self.client is None or not self.client.alive:
            self.settings = settings
            self.client = EngineClient(settings)
            self.starting = True
            try:
                self.client.start(timeout)
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


@dataclass
class QueueReport:
    restored: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (frame, reason)
    cancelled: int = 0
    restarts: int = 0
    faces: int = 0
    no_face: list = field(default_factory=list)  # frames passed through unchanged: no face found

    def summary(self) -> str:
        text = f"Splat Restore: {len(self.restored)} restored, {len(self.failed)} failed"
        if self.faces or self.no_face:
            text += f", {self.faces} faces"
        if self.no_face:
            text += f", {len(self.no_face)} frames without a face left unchanged"
        if self.cancelled:
            text += f", {self.cancelled} cancelled"
        if self.restarts:
            text += f" (engine restarted {self.restarts}x)"
        if self.failed:
            frame, reason = self.failed[0]
            text += f". First failure: {Path(frame).name}: {reason}"
        return text


def new_sequence() -> str:
    """An id for one render's frames: the engine fuses frames of the same id, so every render gets its own."""
    return f"render-{uuid.uuid4().hex[:12]}"


class FrameQueue:
    """`temporal`: the frames submitted are one animation, sent numbered so the engine fuses each with the last."""

    def __init__(self, manager: EngineManager, settings: EngineSettings, max_restarts: int = 1, faces: str = "auto",
                 temporal: bool = False):
        self.manager, self.settings, self.max_restarts, self.faces = manager, settings, max_restarts, faces
        self.pending: list = []  # (src, dst, Request)
        self.report = QueueReport()
        self.sequence = new_sequence() if temporal else None
        self.next_index = 0

    def submit(self, src: str | os.PathLike, dst: str | os.PathLike) -> None:
        """Hand one written frame to the engine; returns at once (the first call may wait for the engine to load)."""
        src, dst = str(src), str(dst)
        options = {"overwrite": True, "in_place": os.path.normcase(src) == os.path.normcase(dst), "faces": self.faces}
        if self.sequence is not None:
            options.update(sequence=self.sequence, index=self.next_index)
            self.next_index += 1
        try:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            request = self._client().restore([(src, dst)], **options)
        except EngineDied:  # it died between two frames: one restart, then this frame again
            try:
                request = self._client().restore([(src, dst)], **options)
            except EngineError as e:
                self.report.failed.append((src, str(e)))
                return
        except (EngineError, OSError) as e:
            self.report.failed.append((src, str(e)))
            return
        self.pending.append((src, dst, request))

    def _client(self) -> EngineClient:
        m = self.manager
        if m.client is not None and not m.client.alive and not m.starting:  # crashed, not stopped by the user
            if self.report.restarts >= self.max_restarts:
                raise EngineDied(f"the engine crashed again after {self.report.restarts} restart(s); "
                                 f"not restarting: {m.client._dead_reason}")
            self.report.restarts += 1
        return m.client_for(self.settings)

    @property
    def progress(self) -> tuple[int, int]:
        done = len(self.report.restored) + len(self.report.failed) + sum(1 for *_, r in self.pending if r.done)
        return done, done + sum(1 for *_, r in self.pending if not r.done)

    def drain(self, timeout: float | None = None) -> QueueReport:
        """Wait for every frame; frames lost to an engine crash are sent again once to a restarted engine."""
        while self.pending:
            batch, self.pending = self.pending, []
            lost = []
            for src, dst, request in batch:
                try:
                    result = request.wait(timeout)
                    self.report.restored.append(dst)
                    for item in result.get("items", []):
                        self.report.faces += len(item.get("faces", []))
                        if item.get("note"):
                            self.report.no_face.append((src, item["note"]))
                except EngineDied:
                    lost.append((src, dst))
                except EngineError as e:
                    if e.code == "cancelled":
                        self.report.cancelled += 1
                    else:
                        self.report.failed.append((src, str(e)))
                except TimeoutError as e:
                    self.report.failed.append((src, str(e)))
            if lost and self.sequence is not None:  # resent after later frames: they must not follow the last one
                self.sequence, self.next_index = new_sequence(), 0
            for src, dst in lost:
                self.submit(src, dst)  # restarts the engine once; after that each lost frame fails with the reason
        return self.report

    def cancel(self) -> None:
        client = self.manager.client
        for *_, request in self.pending:
            if client is not None and client.alive and not request.done:
                try:
                    client.cancel(request)
                except EngineError:
                    pass


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"}


def folder_items(input_dir: str | os.PathLike, output_dir: str | os.PathLike | None,
                 recursive: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a folder of saved renders; output defaults to `<input_dir>/restored`."""
    src = Path(input_dir)
    if not src.is_dir():
        raise ValueError(f"input folder {src} does not exist")
    dst = Path(output_dir) if output_dir else src / RESTORED_FOLDER
    files = src.rglob("*") if recursive else src.glob("*")
    items = [(p, dst / p.relative_to(src)) for p in sorted(files)
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and dst not in p.parents]
    if not items:
        raise ValueError(f"no images (PNG, JPEG, TIFF, WebP) in {src}" + ("" if recursive else
                                                                           " (subfolders need Recursive)"))
    return items


def sequence_items(items: list[tuple[Path, Path]]) -> list[dict]:
    """Restore items for a folder of animation frames: each folder's frames one sequence in natural name order
    (f_2 before f_10), numbered so the engine fuses each frame with the one before."""
    folders: dict = {}
    for src, dst in items:
        folders.setdefault(src.parent, []).append((src, dst))
    out = []
    for frames in folders.values():
        sequence = new_sequence()
        frames.sort(key=lambda pair: natural_key(pair[0].name))
        out += [{"input": str(src), "output": str(dst), "sequence": sequence, "index": k}
                for k, (src, dst) in enumerate(frames)]
    return out
