"""`python -m training evaluate`: LPIPS, PSNR and SSIM of restored images against the clean targets, next to the
same numbers for the degraded inputs (the baseline a restorer must beat) and, with `init`, for a second restorer (the
one a fine-tune started from, which it must beat too). Restores through the engine, as users do."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.atomic import atomic_path, write_bytes_atomic
from engine.measure.fidelity import CONVENTION, psnr, ssim
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
    data = PairDataset(pairs, split, size=1)
    restorers = {}
    if init:
        restorers["init"] = ModelRunner.from_pretrained(init, init_base, accept_license, device=device,
                                                        batch_size=batch_size)
    restorers["restored"] = ModelRunner.from_pretrained(weights, base, accept_license, device=device,
                                                        batch_size=batch_size)
    lpips = LPIPS(vgg_weights, random_init=random_vgg).to(restorers["restored"].device).eval()
    sides = ["degraded", *restorers]
    sums = {side: dict.fromkeys(METRICS, 0.0) for side in sides}
    rows, names = [], []
    for i in tqdm(range(len(data)), unit="img", desc="evaluate", file=sys.stderr, disable=not progress):
        degraded, clean = data.load(i)
        images = {"degraded": degraded} | {side: r.restore([degraded])[0] for side, r in restorers.items()}
        for (side, img), distance in zip(images.items(), lpips.against(clean, list(images.values()))):
            sums[side]["lpips"] += distance / len(data)
            sums[side]["psnr"] += psnr(img, clean) / len(data)
            sums[side]["ssim"] += ssim(img, clean) / len(data)
        if len(rows) < grid_count:
            rows.append(np.concatenate([*images.values(), clean], axis=1))
            names.append(data.pairs[i][1].name)
    result = {"weights": str(weights), "pairs": str(pairs), "split": split, "count": len(data),
              "convention": CONVENTION, "lpips_source": lpips.source, "sides": sides, **sums,
              "improvement": _change(sums, "restored", "degraded")}
    if init:
        result |= {"init_weights": str(init), "over_init": _change(sums, "restored", "init")}
    if grid:
        write_grid(Path(grid), rows)
        result |= {"grid": grid, "grid_rows": names, "grid_columns": [*sides, "clean"]}
    return result


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
