"""One frame's steps from file to file, each deciding the frame's Outcome if it fails there.

read + prepare (decode, find or track its faces, cut them) -> the model, for a group of frames at once -> finish
(paste the faces back, fuse with the sequence's frame before, encode and write). Whatever one frame raises costs that
frame only. Outputs are written atomically or not at all; inputs are never modified.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..images import Frame, ImageError, read_image, write_image
from ..jobs import BAD_INPUT, BAD_OUTPUT, ENGINE_ERROR, Item, Outcome, crop_path


@dataclass
class FrameState:
    """One item on its way through: what each step made, and its outcome once decided."""
    item: Item
    frame: Frame | None = None
    prepared: object = None  # faces.restore.Prepared
    output: object = None  # what the model made for it
    outcome: Outcome | None = None
    tracked: threading.Event = field(default_factory=threading.Event)  # its sequence's next frame may track faces
    fused: threading.Event = field(default_factory=threading.Event)  # its sequence's next frame may fuse

    @property
    def place(self) -> tuple | None:
        """(sequence, index) of an animation frame, whose faces are tracked from the frame before; None: a still."""
        return None if self.item.sequence is None else (self.item.sequence, self.item.index)

    def fail(self, reason: str, code: str) -> None:
        self.outcome = Outcome(self.item, "failed", reason, code)


def describe(e: BaseException) -> str:
    """The first line of the message; the exception's name too unless it is a RuntimeError (ours say enough)."""
    text = str(e).strip().splitlines()
    if isinstance(e, RuntimeError) and text:
        return text[0]
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def read(state: FrameState) -> None:
    item = state.item
    try:
        state.frame = read_image(item.input)
    except ImageError as e:
        state.fail(str(e), BAD_INPUT)
    except Exception as e:  # noqa: BLE001 - an unforeseen decoder error on one odd file
        state.fail(f"{item.input}: cannot read: {describe(e)}", BAD_INPUT)


class InOrder:
    """The context a frame's face tracking runs in: after the frame before it in its sequence (`before`), then
    letting the next one go."""

    def __init__(self, state: FrameState, before: FrameState | None):
        self.state, self.before = state, before

    def __enter__(self):
        if self.before is not None:
            self.before.tracked.wait()

    def __exit__(self, *exc):
        self.state.tracked.set()


def prepare(pipeline, state: FrameState, before: FrameState | None = None) -> None:
    """Find and cut the frame's faces, tracking them after `before` (the sequence's frame before, whose tracking
    this waits for). Sets state.tracked however it ends, so the sequence's next frame never waits forever."""
    try:
        if state.outcome is None:
            state.prepared = pipeline.prepare(state.frame.rgb, state.item.faces, state.place,
                                              in_order=InOrder(state, before))
    except Exception as e:  # noqa: BLE001 - e.g. a detector fault on this frame
        restorer_failed(state, e)
    finally:
        state.tracked.set()


def restorer_failed(state: FrameState, e: BaseException) -> None:
    state.fail(f"{state.item.input}: restorer failed: {describe(e)}", ENGINE_ERROR)


def run_model(pipeline, states: list[FrameState]) -> None:
    """The group's frames through the model in one pass. If that raises, which frame is at fault is unknown: each
    gets a pass of its own."""
    ready = [s for s in states if s.outcome is None]
    if not ready:
        return
    try:
        outputs = pipeline.run_model([s.prepared for s in ready])
    except Exception as e:  # noqa: BLE001 - out of memory, a frame that overflows in fp16, ...
        if len(ready) == 1:
            restorer_failed(ready[0], e)
        else:
            for s in ready:
                run_model(pipeline, [s])
        return
    for s, out in zip(ready, outputs):
        s.output = out


def finish(pipeline, temporal, state: FrameState, before: FrameState | None) -> None:
    """Paste back, fuse after `before` (the sequence's frame before, whose fusion this waits for), write. Sets
    state.fused however it ends, so the sequence's next frame never waits forever."""
    try:
        result = None
        if state.outcome is None:
            try:
                result = pipeline.finish(state.prepared, state.output)
            except Exception as e:  # noqa: BLE001
                restorer_failed(state, e)
        if before is not None:
            before.fused.wait()
        if result is not None:
            _fuse_and_write(pipeline, temporal, state, result)
    finally:
        state.fused.set()
        state.frame = state.prepared = state.output = None  # a finished frame holds only its outcome, not its arrays


def _fuse_and_write(pipeline, temporal, state: FrameState, result) -> None:
    item, frame = state.item, state.frame
    done = Outcome(item, "restored", mode=result.mode, faces=[f.to_dict() for f in result.faces], note=result.note)
    try:
        # fused before anything is written, so a sequence fuses alike whether or not its outputs can be written
        if temporal is not None and item.sequence is not None and result.rgb is not None:
            result.rgb = temporal.fuse(item.sequence, item.index, frame.rgb, result.rgb)
        state.fused.set()
        if item.preroll:
            state.outcome = done
            return
        item.output.parent.mkdir(parents=True, exist_ok=True)
        if result.rgb is not None:
            write_image(item.output, frame, result.rgb, pipeline.provenance)
        else:
            done.crops = _write_crops(item, frame, result.crops, pipeline.provenance)
        state.outcome = done
    except ImageError as e:
        state.fail(str(e), BAD_OUTPUT)
    except OSError as e:
        state.fail(f"{item.output}: cannot write: {e.strerror or e}", BAD_OUTPUT)
    except Exception as e:  # noqa: BLE001 - e.g. an encoder's cv2.error: this output fails, the rest go on
        state.fail(f"{item.output}: cannot write: {describe(e)}", BAD_OUTPUT)


def _write_crops(item: Item, frame: Frame, crops: list, text: dict) -> list[Path]:
    paths = [crop_path(item.output, k) for k in range(len(crops))]
    clash = [p for p in paths if p.exists() and not item.overwrite]
    if clash:
        raise ImageError(clash[0], "already exists (pass --overwrite to replace earlier crops)")
    plain = replace(frame, alpha=None)  # crops carry no alpha, but keep the colour profile and bit depth
    for path, crop in zip(paths, crops):
        write_image(path, plain, crop, text)
    return paths
