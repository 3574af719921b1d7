"""Training pairs as tensors: (degraded, clean) in [-1, 1], with matching random crops and flips.

A pairs folder is either the output of `python -m training degrade` (its manifest gives each pair's split) or real
paired renders (`degraded/`, `clean/`; every pair is "train" unless a manifest says otherwise). Which pairs a step
sees is a pure function of (seed, step, process), so resuming a run replays the same data exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from engine.images import read_image

from .pairs import validate_pairs


class PairError(ValueError):
    pass


class PairDataset:
    def __init__(self, folder: str | Path, split: str = "train", size: int = 512):
        folder = Path(folder)
        report = validate_pairs(folder)
        if not report.ok:
            raise PairError(f"pair folder {folder} is not usable:\n{report.describe()}")
        splits = {}
        manifest = folder / "manifest.jsonl"
        if manifest.is_file():
            for line in manifest.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                if "file" in r:
                    splits[Path(r["file"]).with_suffix("").as_posix()] = r["split"]
        rel = [(d, c, d.relative_to(folder / "degraded").with_suffix("").as_posix()) for d, c in report.pairs]
        self.pairs = [(d, c) for d, c, name in rel if split == "all" or splits.get(name, "train") == split]
        if not self.pairs:
            raise PairError(f"pair folder {folder} has no pairs in split {split!r}")
        self.size = size

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        d, c = self.pairs[index]
        return read_image(d).rgb, read_image(c).rgb

    def sample(self, index: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A (3, size, size) pair; random crop + flip with `rng`, centre crop without."""
        degraded, clean = self.load(index)
        h, w = clean.shape[:2]
        if min(h, w) < self.size:
            raise PairError(f"{self.pairs[index][1]} is {w}x{h}, smaller than the training size {self.size}")
        if rng is None:
            y, x, flip = (h - self.size) // 2, (w - self.size) // 2, False
        else:
            y, x = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
            flip = bool(rng.integers(0, 2))
        out = []
        for img in (degraded, clean):
            crop = img[y:y + self.size, x:x + self.size]
            crop = crop[:, ::-1] if flip else crop
            out.append(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1) * 2 - 1)
        return out[0], out[1]

    def batch(self, seed: int, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch number `index` of the run (the trainer counts them across steps, accumulation and
        processes): epochs are seeded permutations of the pairs, crops and flips seeded per sample."""
        n = len(self)
        xs, ys = [], []
        for k in range(index * batch_size, (index + 1) * batch_size):
            epoch, pos = divmod(k, n)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            x, y = self.sample(int(order[pos]), np.random.default_rng([seed, k, 7]))
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)
