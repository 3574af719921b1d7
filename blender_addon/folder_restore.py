"""Restore Folder's work list: which saved renders go where, and which form one animation. No bpy."""
from __future__ import annotations

import os
from pathlib import Path

from .engine_link.scan import natural_key, scan_folder
from .frame_queue import new_sequence
from .output_paths import RESTORED_FOLDER


def folder_items(input_dir: str | os.PathLike, output_dir: str | os.PathLike | None,
                 recursive: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a folder of saved renders; output defaults to `<input_dir>/restored`."""
    if not str(input_dir).strip():  # Path("") is the working directory: never restore that by accident
        raise ValueError("no input folder given: choose the folder of saved renders to restore")
    src = Path(input_dir)
    if not src.is_dir():
        raise ValueError(f"input folder {src} does not exist")
    dst = Path(output_dir) if output_dir else src / RESTORED_FOLDER
    try:
        items = [(p, dst / p.relative_to(src)) for p in scan_folder(src, dst, recursive)]
    except OSError as e:  # a share that refuses to be listed: name the folder, as every other bad input
        raise ValueError(f"cannot read {e.filename or src}: {e.strerror or e}") from None
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
