"""Which file Blender wrote, and where its restored copy goes. No bpy: tested with plain pytest."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

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
