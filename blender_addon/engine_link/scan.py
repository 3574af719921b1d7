"""Which files in a folder are renders to restore, and which paths no file can have. One rule for the command line,
the service and the add-on.

Standard library only: it ships in the add-on's zip, and the engine imports it from here.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
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


_TEMPORARY_EXTRA = len(temporary_for("x").name) - 1
# in the OS's own units (_length): 255 per file or folder name on Linux (bytes), macOS and NTFS (UTF-16 units); a
# whole path: PATH_MAX less its closing NUL on Linux and macOS, 32,767 on Windows with long paths enabled (without,
# Windows stops at 260, and the write itself reports that)
MAX_NAME = 255
MAX_PATH = 32_767 if os.name == "nt" else 1_023 if sys.platform == "darwin" else 4_095


def _length(text: str) -> int:
    if os.name == "nt":
        return len(text.encode("utf-16-le", "surrogatepass")) // 2
    return len(os.fsencode(text))  # raises UnicodeEncodeError for what no file name here can hold


def path_problem(path: str | os.PathLike, written: bool = False) -> str | None:
    """Why no file can be at `path`, whatever is on disk, or None. From the text alone, so that a path is refused
    where it is received, before any work and before any probe of the disk could raise. `written`: the engine writes
    it, first under temporary_for's longer name."""
    text = os.fspath(path)
    if "\0" in text:
        return "the path holds a NUL byte, which no file name can"
    units = "characters" if os.name == "nt" else "bytes"
    try:
        length = _length(text)
        *folders, name = [_length(part) for part in Path(text).parts] or [0]
    except UnicodeEncodeError as e:
        return f"the path holds {e.object[e.start:e.end]!r}, which no file name on this system can"
    if length > MAX_PATH:
        return f"the path is {length} {units} long; at most {MAX_PATH} fit in a path"
    if any(n > MAX_NAME for n in folders):
        return f"a folder name in it is {max(folders)} {units} long; at most {MAX_NAME} fit in a name"
    room = MAX_NAME - _TEMPORARY_EXTRA if written else MAX_NAME
    if name > room:
        why = f" (the engine writes it first under a name {_TEMPORARY_EXTRA} longer)" if written else ""
        return f"the file name is {name} {units} long; at most {room} fit{why}"
    return None


def printable(path: str | os.PathLike) -> str:
    """`path` for a message: as it is, but with what cannot be shown (a NUL, a lone surrogate) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in os.fspath(path))


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
    first run's results. A folder that cannot be listed raises its OSError."""
    root = Path(folder)
    skip = Path(os.path.abspath(output)) if output else None
    found = []
    def refuse(error: OSError):  # os.walk would skip a folder it cannot list: its frames would go missing unseen
        raise error

    for here, dirs, files in os.walk(root, onerror=refuse):
        base = Path(here)
        dirs[:] = [d for d in dirs if recursive and not is_temporary(d)
                   and not (skip and _inside(Path(os.path.abspath(base / d)), skip))]
        found += [base / f for f in files if not is_temporary(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES
                  and (base / f).is_file()]
    return sorted(found, key=lambda p: natural_key(p.relative_to(root)))
