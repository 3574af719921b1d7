"""`python -m training degrade`: clean face images -> paired clean / degraded / mask images, manifest, contact sheet.

Each image is cropped square around its face (eyes level: the framing face-aware restore uses too), parsed into
regions at the final size, and degraded with a seed derived from the run's seed and the image's name, so results do
not depend on worker count or order. Faces that are not found are listed in the summary and handled as asked
(`--no-face`), never dropped silently.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.atomic import write_bytes_atomic
from engine.faces.align import FaceFrame, centre_frame
from engine.images import ImageError, is_image_path, read_image

from .degrade import DegradeConfig, degrade
from .face_regions import REGIONS, make_parser, whole_image

MIN_SIZE = 64
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
        record.update(status="ok" if regions.found else "no_face", file=str(stem), params=params,
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


def prepare(clean_dir: Path, out: Path, options: PrepareOptions, test_count: int = 0, workers: int = 1,
            progress=None) -> dict:
    sources = collect_sources(clean_dir)
    if test_count > len(sources):
        raise ValueError(f"--test-count {test_count} is more than the {len(sources)} images")
    jobs = [(p, n, "train") for p, n in sources]
    out.mkdir(parents=True, exist_ok=True)
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
    manifest = out / "manifest.jsonl"
    write_bytes_atomic(manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
    summary = {"parser": note, "images": len(records), "pairs": sum(r["status"] != "failed" and "file" in r
                                                                    for r in records),
               "no_face": [r["name"] for r in records if r.get("face") is False],
               "failed": {r["name"]: r["reason"] for r in records if r["status"] == "failed"},
               "test": sum(r["split"] == "test" and "file" in r for r in records), "seed": options.seed}
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
