"""What `check-pairs --align` keeps on disk beside the pairs, and how it knows what is whose.

- `clean_original/REL`: the photo as it came, copied there before `clean/REL` is first replaced by its aligned copy.
  A later `--align` starts again from it, so aligning twice never resamples twice nor loses the original. Which file
  `clean/REL` is, is decided by content, from `clean_original/aligned.json` (the hashes of each original and of the
  aligned copy written from it): when `clean/REL` is neither (a new photo was put there, e.g. by making the pairs
  again), it is the new original and replaces the kept one.
- `valid/NAME.png`: the validity mask of an aligned photo, 255 where the target is to be learnt, 0 where it is not
  (the warp had no data there, or the flow was inconsistent). Not `mask/`, which holds `training degrade`'s damage
  weights (higher = more weight, read only with --region-weight): a 0 there means "no damage, weight 1", the
  opposite of "ignore". The trainer always applies valid/ (training/train.py, recipe_loss).
  The mask records the fingerprint of the aligned photo it was made for (a PNG text chunk), so a photo replaced
  later does not inherit a mask that belongs to another image: a stale mask is ignored, with a warning naming it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from engine.atomic import atomic_path, write_bytes_atomic
from engine.images import png_with_text

from .pairs import file_fingerprint, matches_fingerprint

ORIGINALS = "clean_original"
RECORD = "aligned.json"
VALID = "valid"
VALID_KEY = "splat-restore-valid-for"


def valid_path(folder: Path, name: str) -> Path:
    return folder / VALID / f"{name}.png"


def _record(folder: Path) -> dict:
    try:
        record = json.loads((folder / ORIGINALS / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(folder: Path, record: dict) -> None:
    write_bytes_atomic(folder / ORIGINALS / RECORD, json.dumps(record, indent=1, sort_keys=True).encode())


def original_of(folder: Path, clean: Path) -> Path:
    """The photo to align `clean/REL` from: the kept original when `clean/REL` is the aligned copy written from it
    (or that original itself), else `clean/REL` (never aligned, or replaced by a new photo since)."""
    rel = clean.relative_to(folder / "clean").as_posix()
    kept = folder / ORIGINALS / rel
    entry = _record(folder).get(rel)
    if kept.is_file() and isinstance(entry, dict) and any(
            isinstance(entry.get(k), dict) and matches_fingerprint(clean, entry[k]) for k in ("aligned", "original")):
        return kept
    return clean


def keep_original(folder: Path, clean: Path) -> Path:
    """Copy `clean/REL` into clean_original/ (complete or not at all) and return the kept path."""
    kept = folder / ORIGINALS / clean.relative_to(folder / "clean")
    kept.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(kept) as tmp:
        shutil.copy2(clean, tmp)
    return kept


def write_clean(folder: Path, clean: Path, original: Path, data: bytes) -> None:
    """`clean/REL` := data (the aligned photo, or the original's bytes when aligning failed). The record names the
    new content before the file is replaced, so a run killed in between still recognises `clean/REL` as its own."""
    rel = clean.relative_to(folder / "clean").as_posix()
    record = _record(folder)
    record[rel] = {"original": file_fingerprint(original),
                   "aligned": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    _write_record(folder, record)
    write_bytes_atomic(clean, data)


def write_valid(folder: Path, name: str, valid: np.ndarray, clean: Path) -> None:
    """valid/NAME.png (0/255), naming the aligned photo it belongs to."""
    path = valid_path(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", np.where(valid, 255, 0).astype(np.uint8))
    if not ok:
        raise ValueError(f"could not encode the validity mask {path}")
    belongs = {"clean": clean.relative_to(folder).as_posix(), **file_fingerprint(clean)}
    write_bytes_atomic(path, png_with_text(png.tobytes(), {VALID_KEY: json.dumps(belongs)}))


def remove_valid(folder: Path, name: str) -> None:
    valid_path(folder, name).unlink(missing_ok=True)


def valid_mask_state(folder: Path, name: str, clean: Path) -> str:
    """"none" (no mask), "current" (made for the photo now in clean/), or "stale" (made for another one)."""
    from PIL import Image

    path = valid_path(folder, name)
    if not path.is_file():
        return "none"
    try:
        with Image.open(path) as im:
            belongs = json.loads(im.info.get(VALID_KEY, "null"))
    except (OSError, ValueError):
        return "stale"
    if not isinstance(belongs, dict) or belongs.get("clean") != clean.relative_to(folder).as_posix():
        return "stale"
    return "current" if matches_fingerprint(clean, belongs) else "stale"


def read_valid(folder: Path, name: str, shape: tuple) -> np.ndarray | None:
    """The mask as bool (H, W), or None when it is missing or not the photo's size."""
    path = valid_path(folder, name)
    mask = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if mask is None or mask.shape != tuple(shape[:2]):
        return None
    return mask > 127
