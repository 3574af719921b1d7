"""Restoring files: which inputs map to which outputs, and running them through a Restorer one batch at a time.

Shared by the command line and the stdio service. Each item succeeds or fails on its own; a failure is a reason a
user can act on, and an output is written atomically or not at all. Inputs are never modified unless the caller
explicitly allows writing over them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from blender_addon.engine_link.protocol import Code

from .images import ImageError, is_image_path, read_image, write_image

BAD_INPUT, BAD_OUTPUT, ENGINE_ERROR = Code.BAD_INPUT, Code.BAD_OUTPUT, Code.ENGINE_ERROR


@dataclass
class Item:
    input: Path
    output: Path


@dataclass
class Outcome:
    item: Item
    status: str  # "restored", "skipped" or "failed"
    reason: str = ""
    code: str = ""  # for failures: the protocol's bad_input / bad_output / engine_error

    def to_dict(self) -> dict:
        d = {"input": str(self.item.input), "output": str(self.item.output), "status": self.status}
        if self.reason:
            d["reason"] = self.reason
        if self.code:
            d["code"] = self.code
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
        if src.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in src.glob(pattern) if p.is_file() and is_image_path(p)
                           and not p.name.startswith("."))
            items += [Item(p, outdir / p.relative_to(src)) for p in files]
        elif src.exists():
            items.append(Item(src, outdir / src.name))
        else:
            raise UsageError(f"input {src} does not exist")
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
    """The outcome decided without touching pixels (skip or refuse), else None."""
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


def restore_group(restorer, items: list[Item], report: Callable[[Outcome], None]) -> None:
    """Read, restore together and write one group of frames (at most a batch); each item reported once."""
    frames = []
    for item in items:
        try:
            frames.append((item, read_image(item.input)))
        except ImageError as e:
            report(Outcome(item, "failed", str(e), BAD_INPUT))
    if not frames:
        return
    try:
        restored = restorer.restore([f.rgb for _, f in frames])
    except RuntimeError as e:  # out of memory and friends: these frames fail, the rest carry on
        for item, _ in frames:
            report(Outcome(item, "failed", f"{item.input}: restorer failed: {str(e).splitlines()[0]}", ENGINE_ERROR))
        return
    for (item, frame), rgb in zip(frames, restored):
        try:
            item.output.parent.mkdir(parents=True, exist_ok=True)
            write_image(item.output, frame, rgb)
            report(Outcome(item, "restored"))
        except ImageError as e:
            report(Outcome(item, "failed", str(e), BAD_OUTPUT))
        except OSError as e:
            report(Outcome(item, "failed", f"{item.output}: cannot write: {e.strerror or e}", BAD_OUTPUT))


def restore_items(restorer, items: list[Item], skip_existing: bool = False, overwrite: bool = False,
                  allow_in_place: bool = False, on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Restore `items` in groups of the restorer's batch size."""
    outcomes = []

    def report(o: Outcome):
        outcomes.append(o)
        if on_outcome:
            on_outcome(o)

    pending = []
    for item in items:
        decided = check_item(item, skip_existing, overwrite, allow_in_place)
        if decided:
            report(decided)
        else:
            pending.append(item)
    for k in range(0, len(pending), restorer.batch_size):
        restore_group(restorer, pending[k:k + restorer.batch_size], report)
    return outcomes
