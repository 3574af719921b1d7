"""Restore jobs: which inputs map to which outputs, what was decided for each, and what is decided before any
pixel is read (skip, or refuse a path). Restoring them is engine/pipeline's.

Shared by the command line and the stdio service. Each item succeeds or fails on its own; a failure is a reason a
user can act on, and an output is written atomically or not at all. Inputs are never modified unless the caller
explicitly allows writing over them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from blender_addon.engine_link.protocol import Code
from blender_addon.engine_link.scan import path_problem, printable, scan_folder


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
