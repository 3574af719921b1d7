"""Which files in a folder are renders to restore. One rule for the command line, the service and the add-on.

Standard library only: it ships in the add-on's zip, and the engine imports it from here.
"""
from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

# what the engine reads, plus the float formats it refuses by name (so a folder of EXRs gets a reason, not silence)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".exr", ".hdr"})


def is_temporary(name: str) -> bool:
    """Hidden files and half-written outputs: the engine's (engine/atomic.py: `.NAME.XXXXXXXX.partial.png`) and
    any other writer's `NAME.partial.png` / `NAME.png.partial`."""
    return name.startswith(".") or re.search(r"\.partial(\.|$)", name) is not None


def temporary_for(target: str | os.PathLike) -> Path:
    """A fresh hidden name beside `target` for the engine to write into before renaming: `.NAME.XXXXXXXX.partial.png`
    (the suffix kept, so image writers still pick the format from it)."""
    target = Path(target)
    return target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.partial{target.suffix}")


_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[0-9a-f]{8}\.partial(?P<suffix>(\.[^.]*)?)")


def remove_temporaries(*targets: str | os.PathLike) -> None:
    """Remove what writers of `targets` killed mid-write left behind (an engine killed during a render): they never
    became the file, so they are litter in an artist's render folder. One listing per folder, however many targets."""
    by_folder: dict[Path, set[str]] = {}
    for target in map(Path, targets):
        by_folder.setdefault(target.parent, set()).add(target.name)
    for folder, names in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            m = _TEMPORARY.fullmatch(entry.name)
            if m and m["stem"] + m["suffix"] in names:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def natural_key(path: str | os.PathLike) -> tuple:
    """f_2 before f_10: digit runs compare as numbers, per folder level. The order of a folder's frames for the CLI,
    the service's sequences and the add-on alike."""
    return tuple(tuple((0, int(t), t) if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", part))
                 for part in Path(path).parts)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def scan_folder(folder: str | os.PathLike, output: str | os.PathLike | None = None,
                recursive: bool = False) -> list[Path]:
    """Image files in `folder` (and its subfolders with `recursive`), in natural order. Hidden and temporary files
    and folders are skipped, and so is `output` when it lies inside `folder`: a second run must not restore the
    first run's results."""
    root = Path(folder)
    skip = Path(os.path.abspath(output)) if output else None
    found = []
    for here, dirs, files in os.walk(root):
        base = Path(here)
        dirs[:] = [d for d in dirs if recursive and not is_temporary(d)
                   and not (skip and _inside(Path(os.path.abspath(base / d)), skip))]
        found += [base / f for f in files if not is_temporary(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES
                  and (base / f).is_file()]
    return sorted(found, key=lambda p: natural_key(p.relative_to(root)))
