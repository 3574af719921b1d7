"""`python -m training degrade`: clean face images -> paired clean / degraded / mask images, manifest, contact sheet.

Each image is cropped square around its face (eyes level: the framing face-aware restore uses too), parsed into
regions at the final size, and degraded with a seed derived from the run's seed and the image's name, so results do
not depend on worker count or order. Faces that are not found are listed in the summary and handled as asked
(`--no-face`), never dropped silently.

The pairs are written into a hidden folder beside the output and renamed into place when complete, so a pairs folder
holds one run's pairs or none: a folder that already holds pairs is refused unless `--overwrite` says to replace it,
and it is replaced only when everything in it is what an earlier degrade wrote (its manifest says which files).

`--identities FILE` (CelebA's `image_name identity_id` list) writes each pair's `identity` into its manifest record,
from which training `--reference` draws another photo of the same person; images the list does not name are listed
in the summary (`no_identity`), and a list naming none of the images is an error.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.atomic import write_bytes_atomic
from engine.faces.align import FaceFrame, centre_frame
from engine.images import ImageError, is_image_path, read_image

from .degrade import DegradeConfig, degrade
from .face_regions import REGIONS, make_parser, whole_image
from .pairs import MANIFEST, PAIR_FOLDERS, read_manifest
from .references import identity_of

MIN_SIZE = 64
# pair_check.json: `check-pairs` verdicts on these pairs, stale once they are replaced
WRITTEN_BESIDE_PAIRS = (MANIFEST, "summary.json", "contact_sheet.png", "pair_check.json")
# caches a file manager drops into any folder it shows (Finder, Explorer): regenerated, so replacing them loses nothing
FILE_MANAGER_CACHES = {".DS_Store", "Thumbs.db", "desktop.ini"}
REGION_COLOURS = {"skin": (255, 200, 120), "hair": (150, 60, 255), "eyes": (0, 220, 255), "nose": (60, 255, 60),
                  "mouth": (255, 40, 40)}


@dataclass
class PrepareOptions:
    size: int = 512
    seed: int = 0
    parser: str = "auto"
    segformer: str | None = None
    no_face: str = "whole"  # "whole": degrade as one region and list it; "skip": list it, write nothing


def image_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


def face_crop(image: np.ndarray, frame: FaceFrame | None, size: int) -> np.ndarray:
    """The training framing (engine.faces.align, shared with face-aware restore), or the centre without a face."""
    return (frame or centre_frame(image.shape[1], image.shape[0])).crop(image, size)


def crop_with_regions(image: np.ndarray, parser, size: int):
    """(crop, FaceRegions): the training framing of the face the parser finds, parsed at `size`; else the centre
    crop as one region (`found` False). The parser "none" always takes the centre, as one region."""
    if parser.name == "none":
        crop = face_crop(image, None, size)
        return crop, parser(crop)
    frame = parser.locate(image)
    crop = face_crop(image, frame, size)
    return crop, (parser(crop) if frame is not None else whole_image(crop, parser.name))


def load_rgb8(path: Path) -> np.ndarray:
    frame = read_image(path)
    if min(frame.rgb.shape[:2]) < MIN_SIZE:
        raise ImageError(path, f"{frame.size[0]}x{frame.size[1]} is too small (at least {MIN_SIZE} px a side)")
    return np.clip(np.rint(frame.rgb * 255), 0, 255).astype(np.uint8)


def region_overlay(image: np.ndarray, masks: dict) -> np.ndarray:
    out = image.astype(np.float32)
    for name in ("skin", "hair", "nose", "eyes", "mouth"):
        m = masks[name]
        out[m] = 0.45 * out[m] + 0.55 * np.array(REGION_COLOURS[name], np.float32)
    return out.clip(0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


class Preparer:
    """One per worker process: owns the parser (mediapipe graphs are not shareable across processes)."""

    def __init__(self, options: PrepareOptions, out: Path):
        self.options, self.out = options, out
        self.parser, self.parser_note = make_parser(options.parser, options.segformer)
        self.config = DegradeConfig()

    def __call__(self, path: Path, name: str, split: str) -> dict:
        o = self.options
        record = {"name": name, "source": str(path), "split": split, "parser": self.parser.name}
        try:
            image = load_rgb8(path)
        except ImageError as e:
            return {**record, "status": "failed", "reason": str(e)}
        crop, regions = crop_with_regions(image, self.parser, o.size)
        if self.parser.name != "none":
            record["face"] = regions.found
        if not regions.found:
            if o.no_face == "skip":
                return {**record, "status": "no_face", "reason": "no face found; skipped (--no-face skip)"}
            regions = whole_image(crop, self.parser.name)
        face_size = max(regions.box[2:]) if regions.found else None
        degraded, weight, params = degrade(crop, regions.masks, image_seed(o.seed, name), self.config, face_size)
        stem = Path(name).with_suffix(".png")
        for folder, data in (("clean", crop), ("degraded", degraded),
                             ("mask", np.rint(weight * 255).astype(np.uint8))):
            target = self.out / folder / stem
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, _png(data))
        record.update(status="ok" if regions.found else "no_face", file=stem.as_posix(), params=params,
                      box=regions.box, region_pixels={r: int(regions.masks[r].sum()) for r in REGIONS})
        if not regions.found:
            record["reason"] = "no face found; degraded as one region (--no-face whole)"
        return record


_WORKER: Preparer | None = None


def _init_worker(options: PrepareOptions, out: Path) -> None:
    global _WORKER
    _WORKER = Preparer(options, out)


def _work(job):
    return _WORKER(*job)


def collect_sources(clean_dir: Path) -> list[tuple[Path, str]]:
    if not clean_dir.is_dir():
        raise ValueError(f"clean image folder {clean_dir} does not exist")
    files = sorted(p for p in clean_dir.rglob("*") if p.is_file() and is_image_path(p) and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no images in {clean_dir}")
    # every pair is written as <stem>.png, so a.jpg and a.png would silently overwrite each other's pairs
    first: dict[str, Path] = {}
    for p in files:
        key = p.relative_to(clean_dir).with_suffix("").as_posix().casefold()  # case-insensitive file systems too
        if key in first:
            stem = p.relative_to(clean_dir).with_suffix(".png").as_posix()
            raise ValueError(f"{first[key]} and {p} would both become {stem} in the pairs; rename or remove one "
                             f"of them")
        first[key] = p
    return [(p, p.relative_to(clean_dir).as_posix()) for p in files]


def assign_splits(names: list[str], test_count: int, seed: int) -> dict:
    if test_count > len(names):
        raise ValueError(f"--test-count {test_count} is more than the {len(names)} images")
    order = sorted(names, key=lambda n: image_seed(seed + 1, n))
    test = set(order[:test_count])
    return {n: "test" if n in test else "train" for n in names}


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds files no degrade wrote (whatever `overwrite` says: they are never
    deleted), and one holding an earlier degrade's pairs unless `overwrite`."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"pairs folder {out} is a file, not a folder")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    if not files:
        return
    records = read_manifest(out)
    written = set() if records is None else set(WRITTEN_BESIDE_PAIRS) | {
        f"{folder}/{Path(r['file']).as_posix()}" for r in records if "file" in r for folder in PAIR_FOLDERS}
    foreign = [f for f in files if f not in written and Path(f).name not in FILE_MANAGER_CACHES]
    if foreign:
        raise ValueError(f"pairs folder {out} holds {len(foreign)} files that `training degrade` did not write there "
                         f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); they are never deleted: "
                         f"write the pairs to a new or empty folder")
    pairs = sum("file" in r for r in records or [])
    if pairs and not overwrite:
        raise ValueError(f"pairs folder {out} already holds {pairs} pairs from an earlier degrade: pass --overwrite "
                         f"to replace them, or write to a new folder")


def replace_folder(new: Path, out: Path) -> None:
    """Put the complete folder `new` where `out` is, by renames: `out` holds the old pairs or the new ones, never a mix
    (killed between the two renames, the old ones are in a hidden `.NAME.replaced-*` folder beside it)."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.replaced-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    try:
        new.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old)


def identities_fingerprint(identities: dict | None) -> str | None:
    """Which identity list a degrade was given (summary.json: `fit` tells a run degraded with another list)."""
    if identities is None:
        return None
    return hashlib.sha256(json.dumps(sorted(identities.items())).encode()).hexdigest()[:16]


def prepare(clean_dir: Path, out: Path, options: PrepareOptions, test_count: int = 0, workers: int = 1,
            progress=None, overwrite: bool = False, identities: dict | None = None,
            identities_source: str = "the identity list") -> dict:
    """Degrade every image of `clean_dir` into the pairs folder `out` (new, empty, or with `overwrite` an earlier
    degrade's output, replaced whole); returns the summary. `identities` ({image name: identity}) go into the
    manifest."""
    sources = collect_sources(clean_dir)
    if test_count > len(sources):
        raise ValueError(f"--test-count {test_count} is more than the {len(sources)} images")
    if identities is not None and not any(identity_of(identities, n) is not None for _, n in sources):
        raise ValueError(f"{identities_source} names none of the {len(sources)} images of {clean_dir} (e.g. "
                         f"{sources[0][1]}); it should list them by file name, `image_name identity_id` per line")
    out = out.resolve()
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        summary = _write_pairs(sources, staging, options, test_count, workers, progress, identities)
        check_output(out, overwrite)  # again: the run took a while, and the folder may have changed meanwhile
        try:
            replace_folder(staging, out)
        except OSError as e:  # Windows refuses to rename a folder a program has a file open in
            raise ValueError(f"could not put the new pairs in place of {out} ({e}); it still holds the old ones: "
                             f"close what has it open and run again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _write_pairs(sources: list, out: Path, options: PrepareOptions, test_count: int, workers: int,
                 progress, identities: dict | None = None) -> dict:
    jobs = [(p, n, "train") for p, n in sources]
    records = []
    local = Preparer(options, out)  # also parses the contact sheet
    note = local.parser_note
    if workers > 1:
        ctx = mp.get_context("spawn")  # the same on every platform; mediapipe is not fork-safe
        with ctx.Pool(workers, _init_worker, (options, out)) as pool:
            for r in pool.imap(_work, jobs, chunksize=4):
                records.append(r)
                progress and progress(r)
    else:
        worker = local
        for job in jobs:
            records.append(worker(*job))
            progress and progress(records[-1])
    # held out among the pairs actually written, so an unreadable or faceless image never takes a test slot
    usable = [r["name"] for r in records if "file" in r]
    splits = assign_splits(usable, min(test_count, len(usable)), options.seed)
    for r in records:
        r["split"] = splits.get(r["name"], r["split"])
        identity = identity_of(identities, r["name"]) if identities is not None and "file" in r else None
        if identity is not None:
            r["identity"] = identity
    manifest = out / "manifest.jsonl"
    write_bytes_atomic(manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
    summary = {"parser": note, "images": len(records), "pairs": sum(r["status"] != "failed" and "file" in r
                                                                    for r in records),
               "no_face": [r["name"] for r in records if r.get("face") is False],
               "failed": {r["name"]: r["reason"] for r in records if r["status"] == "failed"},
               "test": sum(r["split"] == "test" and "file" in r for r in records), "seed": options.seed}
    if identities is not None:
        summary |= {"identities": len({r["identity"] for r in records if "identity" in r}),
                    "no_identity": [r["name"] for r in records if "file" in r and "identity" not in r],
                    "identity_list": identities_fingerprint(identities)}
    write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=1).encode())
    write_contact_sheet(out, [r for r in records if "file" in r][:8], local.parser)
    return summary


def write_contact_sheet(out: Path, records: list, parser, cell: int = 256) -> None:
    """clean | regions | degraded, one row per pair (the first few), to look at before training on it."""
    if not records:
        return
    rows = []
    for r in records:
        clean = cv2.cvtColor(cv2.imread(str(out / "clean" / r["file"])), cv2.COLOR_BGR2RGB)
        degraded = cv2.cvtColor(cv2.imread(str(out / "degraded" / r["file"])), cv2.COLOR_BGR2RGB)
        regions = parser(clean) if r.get("face") else whole_image(clean)
        cells = [clean, region_overlay(clean, regions.masks), degraded]
        rows.append(np.concatenate([cv2.resize(c, (cell, cell), interpolation=cv2.INTER_AREA) for c in cells], 1))
    write_bytes_atomic(out / "contact_sheet.png", _png(np.concatenate(rows, 0)))
