"""`python -m training evaluate`: LPIPS, PSNR and SSIM of restored images against the clean targets, next to the
same numbers for the degraded inputs (the baseline a restorer must beat) and, with `init`, for a second restorer (the
one a fine-tune started from, which it must beat too). Restores through the engine, as users do.

Weights that take a reference photo (views 2) restore each pair with its reference (the pairs folder's own
reference/NAME.png, else the fixed choice among its identity's or capture's other photos: references.py), as a user
gives one photo for a run; the grid then shows the reference after the clean target."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.atomic import atomic_path, write_bytes_atomic
from engine.measure.fidelity import CONVENTION, psnr, ssim
from engine.images import read_image
from engine.measure.lpips import LPIPS
from engine.runtime import ModelRunner

from .dataset import PairDataset

METRICS = ("lpips", "psnr", "ssim")


def evaluate(weights: str, pairs: str, split: str = "test", base: str | None = None, device: str = "auto",
             vgg_weights: str | None = None, random_vgg: bool = False, grid: str | None = None,
             grid_count: int = 6, batch_size: int = 1, accept_license: bool = False, progress: bool = False,
             init: str | None = None, init_base: str | None = None) -> dict:
    """Metrics per side: "degraded" (the input as it is), "init" (with `init`: that restorer, on `init_base`) and
    "restored" (`weights`); the grid's columns are the sides, then the clean target."""
    restorers = {}
    if init:
        restorers["init"] = ModelRunner.from_pretrained(init, init_base, accept_license, device=device,
                                                        batch_size=batch_size)
    restorers["restored"] = ModelRunner.from_pretrained(weights, base, accept_license, device=device,
                                                        batch_size=batch_size)
    with_reference = any(_takes_reference(r) for r in restorers.values())
    data = PairDataset(pairs, split, size=1, reference=with_reference)
    lpips = LPIPS(vgg_weights, random_init=random_vgg).to(restorers["restored"].device).eval()
    sides = ["degraded", *restorers]
    sums = {side: dict.fromkeys(METRICS, 0.0) for side in sides}
    rows, names, references = [], [], {}
    for i in tqdm(range(len(data)), unit="img", desc="evaluate", file=sys.stderr, disable=not progress):
        degraded, clean = data.load(i)
        reference = read_image(data.reference_path(i)).rgb if with_reference else None
        images = {"degraded": degraded} | {side: _restore(r, degraded, reference) for side, r in restorers.items()}
        for (side, img), distance in zip(images.items(), lpips.against(clean, list(images.values()))):
            sums[side]["lpips"] += distance / len(data)
            sums[side]["psnr"] += psnr(img, clean) / len(data)
            sums[side]["ssim"] += ssim(img, clean) / len(data)
        if len(rows) < grid_count:
            shown = [_covering(reference, *clean.shape[:2])] if with_reference else []
            rows.append(np.concatenate([*images.values(), clean, *shown], axis=1))
            names.append(data.pairs[i][1].name)
        if with_reference:
            references[data.names[i]] = data.reference_path(i).relative_to(data.folder).as_posix()
    result = {"weights": str(weights), "pairs": str(pairs), "split": split, "count": len(data),
              "convention": CONVENTION, "lpips_source": lpips.source, "sides": sides, **sums,
              "improvement": _change(sums, "restored", "degraded")}
    if init:
        result |= {"init_weights": str(init), "over_init": _change(sums, "restored", "init")}
    if with_reference:
        result["references"] = references  # pair -> the photo it was restored with
    if grid:
        write_grid(Path(grid), rows)
        result |= {"grid": grid, "grid_rows": names,
                   "grid_columns": [*sides, "clean"] + (["reference"] if with_reference else [])}
    return result


def _takes_reference(runner) -> bool:
    return bool(getattr(runner, "takes_reference", False))  # stand-in runners (tests) restore frames alone


def _restore(runner, image: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """One image through `runner`, beside the reference photo when the runner takes one."""
    if reference is not None and _takes_reference(runner):
        return runner.restore([image], reference=reference)[0]
    return runner.restore([image])[0]


def _covering(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """`image` scaled to cover (h, w) and centre-cropped to it: the reference as a grid cell beside its pair."""
    import cv2

    scale = max(h / image.shape[0], w / image.shape[1])
    size = (max(w, round(image.shape[1] * scale)), max(h, round(image.shape[0] * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    y, x = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[y:y + h, x:x + w]


def _change(sums: dict, side: str, baseline: str) -> dict:
    return {k: sums[side][k] - sums[baseline][k] for k in METRICS}


def write_grid(path: Path, rows: list) -> None:
    """One row per pair, its columns side by side; rows of different sizes are scaled to the first's width."""
    import cv2

    width = rows[0].shape[1]
    scaled = [r if r.shape[1] == width else cv2.resize(r, (width, round(r.shape[0] * width / r.shape[1])))
              for r in rows]
    img = (np.concatenate(scaled, axis=0) * 255).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    write_bytes_atomic(path, buf.tobytes())


def write_json(path: Path, result: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
