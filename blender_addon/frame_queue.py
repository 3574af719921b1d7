"""Frames handed to the engine as Blender writes them, and the engine's lifetime. No bpy: tested with plain pytest.

Each frame is one request, sent the moment Blender has written the file, so restoring overlaps rendering; the engine
batches whatever is queued. If the engine dies, it is restarted once and the unfinished frames are sent again; the
engine writes atomically, so a frame it did not finish is simply absent, never half-written.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from .engine_link.client import EngineClient, EngineDied, EngineError, EngineSettings, find_venv_python
from .engine_link.scan import natural_key, scan_folder

RESTORED_FOLDER = "restored"


def check_restored_folder(folder: str) -> str:
    """The scene's "Folder" setting, normalized ("a/../b" is "b", so no stray "a" is created), and refused unless it
    names a folder strictly inside the output folder: anything else (empty, ".", absolute, or out through "..")
    would put restored frames over the renders or outside the shot."""
    text = folder.strip()
    where = f"the Folder setting {folder!r}"
    if not text:
        raise ValueError(f"{where} is empty: restored frames would overwrite the renders. Name a subfolder "
                         f"(e.g. {RESTORED_FOLDER!r}) or turn on In Place")
    windows = PureWindowsPath(text)
    if text.startswith(("/", "\\")) or windows.drive or windows.root:  # "//" too: Blender's blend-relative prefix
        raise ValueError(f"{where} is an absolute path: it must be a subfolder of the output folder, "
                         f"e.g. {RESTORED_FOLDER!r}")
    parts = []
    for part in PurePosixPath(text.replace("\\", "/")).parts:
        if part == "..":
            if not parts:
                raise ValueError(f"{where} leads out of the output folder through '..': it must be a subfolder "
                                 f"of the output folder, e.g. {RESTORED_FOLDER!r}")
            parts.pop()
        elif part != ".":
            parts.append(part)
    if not parts:
        raise ValueError(f"{where} is the output folder itself: restored frames would overwrite the renders. "
                         f"Name a subfolder (e.g. {RESTORED_FOLDER!r}) or turn on In Place")
    return "/".join(parts)


def restored_path(frame: str | os.PathLike, in_place: bool = False, folder: str = RESTORED_FOLDER) -> Path:
    """Where a restored frame goes: `<frame dir>/<folder>/<same name>`, or the frame itself when in place."""
    frame = Path(frame)
    return frame if in_place else frame.parent / check_restored_folder(folder) / frame.name


def newest_existing(candidates) -> Path | None:
    """The file Blender just wrote: render_write does not say whether it wrote an animation frame
    (`frame_path`, numbered) or a still (the output path itself), so take whichever exists and is newest."""
    found = [Path(c) for c in candidates if c and Path(c).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


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
    """The frames of one render. `in_place` alone decides whether a frame may be replaced; otherwise it goes to
    `folder` beside it (checked by check_restored_folder before the render starts). `temporal`: the frames are one
    animation, sent numbered so the engine fuses each with the last."""

    def __init__(self, manager: EngineManager, settings: EngineSettings, max_restarts: int = 1, faces: str = "auto",
                 in_place: bool = False, folder: str = RESTORED_FOLDER, temporal: bool = False):
        self.manager, self.settings, self.max_restarts, self.faces = manager, settings, max_restarts, faces
        self.in_place, self.folder = in_place, folder if in_place else check_restored_folder(folder)
        self.pending: list = []  # (src, dst, EngineClient, Request)
        self.report = QueueReport()
        self.sequence = new_sequence() if temporal else None
        self.next_index = 0

    def submit(self, frame: str | os.PathLike) -> None:
        """Hand one written frame to the engine; returns at once (the first call may wait for the engine to load)."""
        self._send(str(frame), str(restored_path(frame, self.in_place, self.folder)))

    def _send(self, src: str, dst: str) -> None:
        options = {"overwrite": True, "in_place": self.in_place, "faces": self.faces}
        if self.sequence is not None:
            options.update(sequence=self.sequence, index=self.next_index)
            self.next_index += 1
        client = self.manager.client
        if client is not None and client.alive:  # frames keep coming while a hung engine holds earlier ones
            client.check_hung()
        try:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            client = self._client()
            request = client.restore([(src, dst)], **options)
        except EngineDied:  # it died between two frames: one restart, then this frame again
            try:
                client = self._client()
                request = client.restore([(src, dst)], **options)
            except EngineError as e:
                self.report.failed.append((src, str(e)))
                return
        except (EngineError, OSError) as e:
            self.report.failed.append((src, str(e)))
            return
        self.pending.append((src, dst, client, request))

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

    def drain(self) -> QueueReport:
        """Wait for every frame; frames lost to an engine crash are sent again once to a restarted engine, and an
        engine silent for settings.stall_timeout is stopped, failing its frames."""
        while self.pending:
            batch, self.pending = self.pending, []
            lost = []
            for src, dst, client, request in batch:
                try:
                    result = client.wait(request)
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
            if lost and self.sequence is not None:  # resent after later frames: they must not follow the last one
                self.sequence, self.next_index = new_sequence(), 0
            for src, dst in lost:
                self._send(src, dst)  # restarts the engine once; after that each lost frame fails with the reason
        return self.report

    def cancel(self) -> None:
        client = self.manager.client
        for *_, request in self.pending:
            if client is not None and client.alive and not request.done:
                try:
                    client.cancel(request)
                except EngineError:
                    pass


def folder_items(input_dir: str | os.PathLike, output_dir: str | os.PathLike | None,
                 recursive: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a folder of saved renders; output defaults to `<input_dir>/restored`."""
    if not str(input_dir).strip():  # Path("") is the working directory: never restore that by accident
        raise ValueError("no input folder given: choose the folder of saved renders to restore")
    src = Path(input_dir)
    if not src.is_dir():
        raise ValueError(f"input folder {src} does not exist")
    dst = Path(output_dir) if output_dir else src / RESTORED_FOLDER
    items = [(p, dst / p.relative_to(src)) for p in scan_folder(src, dst, recursive)]
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
