"""Frames handed to the engine as Blender writes them. No bpy: tested with plain pytest.

Each frame is one request, sent the moment Blender has written the file, so restoring overlaps rendering; the engine
batches whatever is queued. If the engine dies, it is restarted once and the frames it had not reported written are
sent again; the engine writes atomically, so a frame it did not finish is simply absent, never half-written.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .engine_link.client import EngineClient, EngineDied, EngineError, EngineSettings
from .engine_manager import EngineManager
from .output_paths import RESTORED_FOLDER, check_restored_folder, restored_path
from .reference_photo import request_options


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
    animation, sent numbered so the engine fuses each with the last. `reference`: the scene's Reference Photo, sent
    with each frame when the engine's weights take one."""

    def __init__(self, manager: EngineManager, settings: EngineSettings, max_restarts: int = 1, faces: str = "auto",
                 in_place: bool = False, folder: str = RESTORED_FOLDER, temporal: bool = False, reference: str = ""):
        self.manager, self.settings, self.max_restarts, self.faces = manager, settings, max_restarts, faces
        self.reference = reference
        self.in_place, self.folder = in_place, folder if in_place else check_restored_folder(folder)
        self.pending: list = []  # (src, dst, EngineClient, Request)
        self.report = QueueReport()
        self.sequence = new_sequence() if temporal else None
        self.next_index = 0

    def submit(self, frame: str | os.PathLike) -> None:
        """Hand one written frame to the engine; returns at once (the first call may wait for the engine to load)."""
        self._send(str(frame), str(restored_path(frame, self.in_place, self.folder)))

    def record_missing(self, where: str, reason: str) -> None:
        """A frame Blender wrote that cannot be found: it fails, and still takes its number in the sequence, so the
        engine restarts the fusion at the next frame rather than fusing it with the frame before the missing one."""
        self.report.failed.append((where, reason))
        if self.sequence is not None:
            self.next_index += 1

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
            request = client.restore([(src, dst)], **options, **request_options(self.reference, client))
        except EngineDied:  # it died between two frames: one restart, then this frame again
            try:
                client = self._client()
                request = client.restore([(src, dst)], **options, **request_options(self.reference, client))
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
                    self._record(src, dst, client.wait(request).get("items", []))
                except EngineDied:
                    if request.decided:  # written before the crash: an In Place frame sent again is restored twice
                        self._record(src, dst, request.decided)
                    else:
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

    def _record(self, src: str, dst: str, items: list[dict]) -> None:
        """One frame's outcome from the engine's items for it (the final answer's, or those it reported before
        dying)."""
        failed = [i for i in items if i.get("status") == "failed"]
        if failed:
            self.report.failed.append((src, failed[0].get("reason", "failed")))
            return
        self.report.restored.append(dst)
        for item in items:
            self.report.faces += len(item.get("faces", []))
            if item.get("note"):
                self.report.no_face.append((src, item["note"]))

    def cancel(self) -> None:
        client = self.manager.client
        for *_, request in self.pending:
            if client is not None and client.alive and not request.done:
                try:
                    client.cancel(request)
                except EngineError:
                    pass
