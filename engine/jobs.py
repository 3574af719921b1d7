"""Restoring files: which inputs map to which outputs, and running them through a ModelRunner one batch at a time.

Shared by the command line and the stdio service. Each item succeeds or fails on its own; a failure is a reason a
user can act on, and an output is written atomically or not at all. Inputs are never modified unless the caller
explicitly allows writing over them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from blender_addon.engine_link.protocol import Code
from blender_addon.engine_link.scan import path_problem, printable, scan_folder

from .images import Frame, ImageError, read_image, write_image

BAD_INPUT, BAD_OUTPUT, ENGINE_ERROR = Code.BAD_INPUT, Code.BAD_OUTPUT, Code.ENGINE_ERROR


@dataclass
class Item:
    input: Path
    output: Path
    faces: str = "auto"  # faces.restore.MODES
    overwrite: bool = False  # only-crops mode: whether crops from an earlier run may be replaced
    sequence: object = None  # frames of one animation are fused in order (temporal.Sequences); None: a still
    index: int = 0
    preroll: bool = False  # restored and fused only for the frames after it (a shard's start), never written/reported


@dataclass
class Outcome:
    item: Item
    status: str  # "restored", "skipped" or "failed"
    reason: str = ""
    code: str = ""  # for failures: the protocol's bad_input / bad_output / engine_error
    mode: str = ""  # how a restored frame was done: "whole" or "faces"
    faces: list = field(default_factory=list)  # faces.restore.FaceReport dicts
    crops: list = field(default_factory=list)  # paths written in only-crops mode
    note: str = ""  # e.g. no face found: the frame was passed through unchanged

    def to_dict(self) -> dict:
        d = {"input": str(self.item.input), "output": str(self.item.output), "status": self.status}
        for key in ("reason", "code", "mode", "note"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        if self.mode == "faces":
            d["faces"] = self.faces
        if self.crops:
            d["crops"] = [str(c) for c in self.crops]
        return d


class UsageError(ValueError):
    pass


def collect_items(inputs: Iterable[str | os.PathLike], outdir: str | os.PathLike,
                  recursive: bool = False) -> list[Item]:
    """Files map to OUTDIR/<name>; folders to OUTDIR/<path relative to that folder> (subfolders with recursive)."""
    outdir = Path(outdir)
    items = []
    for raw in inputs:
        src = Path(raw)
        problem = path_problem(src)
        if problem:
            raise UsageError(f"input {printable(src)}: {problem}")
        try:
            if src.is_dir():
                items += [Item(p, outdir / p.relative_to(src)) for p in scan_folder(src, outdir, recursive)]
            elif src.exists():
                items.append(Item(src, outdir / src.name))
            else:
                raise UsageError(f"input {src} does not exist")
        except OSError as e:  # a share that refuses to be listed or probed: name it, as every other bad input
            raise UsageError(f"input {e.filename or src}: cannot read: {e.strerror or e}") from None
    seen = {}
    for it in items:
        key = os.path.normcase(os.path.abspath(it.output))
        if key in seen:
            raise UsageError(f"inputs {seen[key]} and {it.input} would both be written to {it.output}")
        seen[key] = it.input
    return items


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.normcase(a.resolve()) == os.path.normcase(b.resolve())
    except OSError:
        return False


def check_item(item: Item, skip_existing: bool, overwrite: bool, allow_in_place: bool = False) -> Outcome | None:
    """The outcome decided without touching pixels (skip or refuse), else None. A path no file can have, or one the
    OS will not let us probe (a network share's permission error), fails this item, never the caller."""
    for path, code, written in ((item.input, BAD_INPUT, False), (item.output, BAD_OUTPUT, True)):
        problem = path_problem(path, written)
        if problem:
            return Outcome(item, "failed", f"{printable(path)}: {problem}", code)
    if item.faces == "only-crops":  # the frame's own output is not written; its crops are checked when written
        return None
    try:
        return _check_output(item, skip_existing, overwrite, allow_in_place)
    except OSError as e:
        return Outcome(item, "failed", f"{item.output}: cannot check: {e.strerror or e}", BAD_OUTPUT)


def _check_output(item: Item, skip_existing: bool, overwrite: bool, allow_in_place: bool) -> Outcome | None:
    if same_file(item.input, item.output) and not allow_in_place:
        return Outcome(item, "failed", f"{item.output}: output is the input file itself; inputs are never "
                                       f"overwritten unless in-place is asked for explicitly", BAD_OUTPUT)
    if item.output.exists() and not same_file(item.input, item.output):
        if skip_existing:
            return Outcome(item, "skipped", f"{item.output} exists")
        if not overwrite:
            return Outcome(item, "failed", f"{item.output}: already exists (pass --overwrite to replace it or "
                                           f"--skip-existing to keep it)", BAD_OUTPUT)
    return None


def crop_path(output: Path, index: int) -> Path:
    """Where only-crops mode writes a frame's face `index`: beside the frame's output, numbered."""
    return output.with_name(f"{output.stem}_face{index}{output.suffix}")


def restore_group(pipeline, items: list[Item], report: Callable[[Outcome], None], temporal=None) -> None:
    """Read, restore together (a faces.restore.FramePipeline) and write one group of frames; each reported once.
    Items of a sequence are fused with their sequence's previous frame by `temporal` (a temporal.Sequences).

    Whatever one frame raises (a decoder's cv2.error, a ValueError deep in a library, out of memory) costs that frame
    only: the others are still restored and written.
    """
    loaded = []
    for item in items:
        try:
            loaded.append((item, read_image(item.input)))
        except ImageError as e:
            report(Outcome(item, "failed", str(e), BAD_INPUT))
        except Exception as e:  # noqa: BLE001 - an unforeseen decoder error on one odd file
            report(Outcome(item, "failed", f"{item.input}: cannot read: {_describe(e)}", BAD_INPUT))
    if loaded:
        _restore_loaded(pipeline, loaded, report, temporal)


def _describe(e: BaseException) -> str:
    """The first line of the message; the exception's name too unless it is a RuntimeError (ours say enough)."""
    text = str(e).strip().splitlines()
    if isinstance(e, RuntimeError) and text:
        return text[0]
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _restore_loaded(pipeline, loaded: list, report: Callable[[Outcome], None], temporal=None) -> None:
    try:
        results = pipeline.restore([f.rgb for _, f in loaded], [item.faces for item, _ in loaded])
    except Exception as e:  # noqa: BLE001
        if len(loaded) > 1:  # which frame is at fault is unknown: give each its own try
            for one in loaded:
                _restore_loaded(pipeline, [one], report, temporal)
            return
        item = loaded[0][0]
        report(Outcome(item, "failed", f"{item.input}: restorer failed: {_describe(e)}", ENGINE_ERROR))
        return
    for (item, frame), result in zip(loaded, results):
        done = Outcome(item, "restored", mode=result.mode, faces=[f.to_dict() for f in result.faces],
                       note=result.note)
        try:
            # fused before anything is written, so a sequence fuses alike whether or not its outputs can be written
            if temporal is not None and item.sequence is not None and result.rgb is not None:
                result.rgb = temporal.fuse(item.sequence, item.index, frame.rgb, result.rgb)
            if item.preroll:
                continue
            item.output.parent.mkdir(parents=True, exist_ok=True)
            if result.rgb is not None:
                write_image(item.output, frame, result.rgb, pipeline.provenance)
            else:
                done.crops = _write_crops(item, frame, result.crops, pipeline.provenance)
            report(done)
        except ImageError as e:
            report(Outcome(item, "failed", str(e), BAD_OUTPUT))
        except OSError as e:
            report(Outcome(item, "failed", f"{item.output}: cannot write: {e.strerror or e}", BAD_OUTPUT))
        except Exception as e:  # noqa: BLE001 - e.g. an encoder's cv2.error: this output fails, the rest go on
            report(Outcome(item, "failed", f"{item.output}: cannot write: {_describe(e)}", BAD_OUTPUT))


def _write_crops(item: Item, frame: Frame, crops: list, text: dict) -> list[Path]:
    paths = [crop_path(item.output, k) for k in range(len(crops))]
    clash = [p for p in paths if p.exists() and not item.overwrite]
    if clash:
        raise ImageError(clash[0], "already exists (pass --overwrite to replace earlier crops)")
    plain = replace(frame, alpha=None)  # crops carry no alpha, but keep the colour profile and bit depth
    for path, crop in zip(paths, crops):
        write_image(path, plain, crop, text)
    return paths


def restore_items(pipeline, items: list[Item], skip_existing: bool = False, overwrite: bool = False,
                  allow_in_place: bool = False, on_outcome: Callable[[Outcome], None] | None = None,
                  temporal=None) -> list[Outcome]:
    """Restore `items` with a faces.restore.FramePipeline in groups of its batch size (sequences fused by
    `temporal`, a temporal.Sequences, in the order given). Pre-roll items are restored and fused, not reported."""
    outcomes = []

    def report(o: Outcome):
        if o.item.preroll:  # its own shard reports it
            return
        outcomes.append(o)
        if on_outcome:
            on_outcome(o)

    pending = []
    for item in items:
        decided = None if item.preroll else check_item(item, skip_existing, overwrite, allow_in_place)
        if decided:
            report(decided)
        else:
            pending.append(item)
    for k in range(0, len(pending), pipeline.batch_size):
        restore_group(pipeline, pending[k:k + pipeline.batch_size], report, temporal)
    return outcomes
