"""Make Training Pairs without Blender: which camera goes with which photo, which cameras are held out, whether a
camera can render a photo's shape, what the pairs folder holds and what the manifest says. Standard library only
(tested with plain pytest); the operator (pairs_operator.py) does the rendering.

A pairs folder is what `python -m training degrade` writes and the trainer reads: `degraded/NAME.png` (here the
render), `clean/NAME.png` (the photo) and `manifest.jsonl`, one record per pair with its split. A pair is listed
only once both its files are in place, so whatever stops a run (Esc, an error, a crash) leaves whole, listed pairs.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .engine_link.scan import IMAGE_SUFFIXES, is_temporary, natural_key, temporary_for

MANIFEST = "manifest.jsonl"
# what a pairs folder may hold: per pair, these folders' NAME.png (mask/ and clean_original/ come from check-pairs
# --align), and beside them the files training degrade writes
PAIR_FOLDERS = ("degraded", "clean", "mask", "clean_original")
BESIDE_PAIRS = (MANIFEST, "summary.json", "contact_sheet.png")
FILE_MANAGER_CACHES = {".DS_Store", "Thumbs.db", "desktop.ini"}
STAGING_PREFIX = ".splat-restore-photos-"
# formats a capture may hold that the engine does not read: a camera whose photo is only in one is named, not unmatched
NOT_READ = {".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2", ".heic", ".heif", ".avif"}
MATCH_RULE = "a camera takes the photo whose file name without extension is the camera's name, ignoring case"


@dataclass
class Matching:
    pairs: list = field(default_factory=list)  # (camera name, photo path), in name order
    unmatched_cameras: list = field(default_factory=list)
    unmatched_photos: list = field(default_factory=list)  # file names
    not_read: dict = field(default_factory=dict)  # camera name -> why its photo cannot be used


def list_photos(folder: str | os.PathLike) -> list[Path]:
    """The photos in `folder` (not its subfolders): images the engine reads, and the formats it names as unread."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"photos folder {root} {'is a file' if root.exists() else 'does not exist'}")
    try:
        entries = list(os.scandir(root))
    except OSError as e:
        raise ValueError(f"cannot list the photos folder {root}: {e.strerror or e}") from None
    suffixes = IMAGE_SUFFIXES | NOT_READ
    return sorted((Path(e.path) for e in entries if e.is_file() and not is_temporary(e.name)
                   and Path(e.name).suffix.lower() in suffixes), key=natural_key)


def _by_key(names, what: str) -> dict:
    found: dict = {}
    for name, value in names:
        key = name.casefold()
        if key in found:
            raise ValueError(f"{what} {found[key][0]!r} and {name!r} differ only in case, so both would take the "
                             f"same photo ({MATCH_RULE}): rename one of them")
        found[key] = (name, value)
    return found


def match_cameras(cameras: list[str], photos: list[Path]) -> Matching:
    """Cameras to photos by name. Nothing is guessed: the rest is listed. Two usable photos for one camera, or no
    camera with a photo at all, is an error."""
    cams = _by_key(((c, c) for c in cameras), "cameras")
    readable = [p for p in photos if p.suffix.lower() not in NOT_READ]
    by_stem: dict = {}
    for p in readable:
        key = p.stem.casefold()
        if key in by_stem:
            raise ValueError(f"photos {by_stem[key][1].name} and {p.name} both match camera-name {p.stem!r} "
                             f"({MATCH_RULE}): move one of them out of the photos folder")
        by_stem[key] = (p.name, p)
    unread = {p.stem.casefold(): p for p in photos if p.suffix.lower() in NOT_READ}
    result = Matching()
    for key, (camera, _) in sorted(cams.items(), key=lambda kv: natural_key(kv[1][0])):
        if key in by_stem:
            result.pairs.append((camera, by_stem[key][1]))
        elif key in unread:
            result.not_read[camera] = (f"{unread[key]}: {unread[key].suffix} files are not read (camera raw or "
                                       f"HEIF): export the photo as JPEG, PNG or TIFF")
        else:
            result.unmatched_cameras.append(camera)
    result.unmatched_photos = [name for key, (name, _) in sorted(by_stem.items()) if key not in cams]
    if not result.pairs:
        raise ValueError(f"no camera matches a photo ({MATCH_RULE}): cameras {few(sorted(cameras))}; photos "
                         f"{few([p.name for p in photos]) or 'none'}" +
                         "".join(f"; {reason}" for reason in list(result.not_read.values())[:3]))
    return result


def few(names: list, n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def holdout_splits(names: list[str], every: int) -> dict:
    """{name: "train" or "test"}: in name order the 1st, (every+1)th, (2*every+1)th... camera is held out for testing
    (so the held-out views spread around a rig numbered in order); a single camera is trained on."""
    if every < 2:
        raise ValueError(f"holdout {every}: hold out every 2nd camera or fewer (2 or more)")
    order = sorted(names, key=natural_key)
    return {n: "test" if k % every == 0 and len(order) > 1 else "train" for k, n in enumerate(order)}


def orientation(size) -> str:
    return "landscape" if size[0] > size[1] else "portrait" if size[0] < size[1] else "square"


def fit_problem(camera: str, sensor_fit: str, scene_size, photo_size) -> str | None:
    """Why `camera` cannot render the photo's shape with the field of view it has in the scene, or None.

    Blender fits the sensor width to the render's width (Horizontal), its height (Vertical), or with Auto the larger
    of the two (the width when they are equal: the same thing for a square). Rendering at the photo's size keeps the
    camera's view when the fitted side stays the same as at the scene's own resolution, where the camera was set
    up; with Auto, a portrait photo in a landscape scene (or the other way round) moves the sensor to the other side,
    so whether that is right depends on what the camera was set up for: the user says, by choosing the fit."""
    if sensor_fit != "AUTO" or "square" in (orientation(scene_size), orientation(photo_size)):
        return None
    if orientation(scene_size) == orientation(photo_size):
        return None
    return (f"camera {camera}: its photo is {photo_size[0]}x{photo_size[1]} ({orientation(photo_size)}) but the "
            f"scene's resolution is {scene_size[0]}x{scene_size[1]} ({orientation(scene_size)}); with Sensor Fit "
            f"Auto the sensor spans the larger side, so at the photo's size it would span the other side than in "
            f"the scene and change this camera's field of view. Set the camera's Sensor Fit to Horizontal or "
            f"Vertical: the side of the photo its Sensor Width spans (Vertical for a camera turned upright whose "
            f"sensor width is its long side)")


def pixel_aspect_problem(x: float, y: float) -> str | None:
    if abs(x - y) <= 1e-6 * max(x, y):
        return None
    return (f"the scene's pixel aspect is {x:g}:{y:g}; photos have square pixels, so their renders must too: set "
            f"Pixel Aspect to 1:1 (Output Properties > Format)")


def pair_record(camera: str, photo: dict, split: str, render_size) -> dict:
    """The manifest record of one pair, as `training degrade` writes them (name, file, split, source, status), with
    what this pair is: the camera, the photo's size (upright) and the render's, and the bit depth of both files."""
    return {"name": camera, "file": f"{camera}.png", "split": split, "source": photo["source"], "status": "ok",
            "camera": camera, "photo_size": [photo["width"], photo["height"]], "render_size": list(render_size),
            "bit_depth": photo["bit_depth"], "made_by": "splat_restore.make_training_pairs"}


def read_records(out: Path) -> list[dict] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} is not a manifest record: choose a new pairs folder")
        records.append(record) if record else None
    return records


def existing_pairs(out: Path, overwrite: bool) -> list[Path]:
    """The files of earlier pairs in `out` that a new run replaces (with `overwrite`). Refused: a folder holding files
    no pairs run wrote (never deleted, whatever `overwrite` says), and one holding pairs without `overwrite`."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise ValueError(f"pairs folder {out} is a file, not a folder")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                   and p.name not in FILE_MANAGER_CACHES and not p.relative_to(out).parts[0].startswith(STAGING_PREFIX))
    if not files:
        return []
    records = read_records(out) or []
    written = {f"{folder}/{r['file']}" for r in records if isinstance(r.get("file"), str) for folder in PAIR_FOLDERS}
    written |= set(BESIDE_PAIRS) if records or MANIFEST in files else set()
    foreign = [f for f in files if f not in written]
    if foreign:
        raise ValueError(f"pairs folder {out} holds {len(foreign)} files that no pairs run wrote ({few(foreign, 5)});"
                         f" they are never deleted: choose a new or empty folder")
    pairs = sum("file" in r for r in records)
    if pairs and not overwrite:
        raise ValueError(f"pairs folder {out} already holds {pairs} pairs from an earlier run: replace them "
                         f"(Replace Existing Pairs; overwrite=True from a script: only the files its manifest lists "
                         f"are removed), or choose a new folder")
    return [out / f for f in files]


def write_atomic(target: Path, data: bytes) -> None:
    tmp = temporary_for(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_manifest(out: Path, records: list[dict]) -> None:
    write_atomic(out / MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8"))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header: Blender's Python has no image library to ask."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])


def describe_summary(summary: dict) -> str:
    """The report of a run, one line: what was made, what was held out, what was left out and why."""
    made = len(summary["pairs"])
    parts = [f"{made} training pair{'s' if made != 1 else ''} in {summary['output']}"
             f" ({len(summary['test'])} test: {few(summary['test']) or 'none'})"]
    if summary["cancelled"]:
        parts.append(f"cancelled, {len(summary['not_made'])} cameras not rendered")
    for title, items in (("unmatched cameras", summary["unmatched_cameras"]),
                         ("unmatched photos", summary["unmatched_photos"])):
        if items:
            parts.append(f"{len(items)} {title}: {few(items)}")
    if summary["failed"]:
        parts.append(f"{len(summary['failed'])} failed: " + "; ".join(summary["failed"].values()))
    return "Splat Restore: " + "; ".join(parts)
