"""Training pairs as tensors: (degraded, clean) in [-1, 1] and the per-pixel weights (channel 0: the damage mask in
[0, 1]; channel 1: the validity, 0 where the target is not to be learnt), all three with the same random crop and flip.

A pairs folder is either the output of `python -m training degrade` (its manifest lists the pairs and gives each one's
split; image files it does not list are ignored, with a warning naming them) or real paired renders (`degraded/`,
`clean/`, no manifest; every pair is "train"). Which pairs a step sees is a pure function of (seed, step, process),
so resuming a run replays the same data exactly; `batches` hands them to a DataLoader whose workers decode while the
GPU trains, indexed by micro-batch so that resuming at step N starts the loader at N.

Pairs that `check-pairs` flagged (a current verdict in pair_check.json) are left out, with a warning naming them
(`skipped`); validity masks come from `check-pairs --align` (valid/NAME.png, see aligned_files.py), all-valid without.

With `reference=True` (training `--reference`) each sample also carries a reference photo of the same person
(references.py says where it comes from), with its own crop and the pair's flip; pairs that have none are named.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.images import ImageError, read_image

from .aligned_files import valid_mask_state, valid_path
from .pair_check import flagged_pairs
from .pairs import MANIFEST, manifest_splits, read_manifest, validate_pairs
from .references import ReferenceIndex, fit_reference, reference_crop


class PairError(ValueError):
    pass


class UnlistedPairsWarning(UserWarning):
    pass


class FlaggedPairsWarning(UserWarning):
    pass


class StaleValidMaskWarning(UserWarning):
    pass


class NoReferenceWarning(UserWarning):
    pass


def _names(items) -> str:
    items = list(items)
    return ", ".join(items[:10]) + (" ..." if len(items) > 10 else "")


class PairDataset:
    def __init__(self, folder: str | Path, split: str = "train", size: int = 512, skip_flagged: bool = True,
                 reference: bool = False):
        folder = Path(folder)
        report = validate_pairs(folder)
        if not report.ok:
            raise PairError(f"pair folder {folder} is not usable:\n{report.describe()}")
        if report.unlisted:  # e.g. pairs of an earlier degrade into the same folder: never trained on, but said
            warnings.warn(f"pair folder {folder}: ignoring {len(report.unlisted)} files its {MANIFEST} does not list: "
                          f"{', '.join(report.unlisted[:10])}" + (" ..." if len(report.unlisted) > 10 else ""),
                          UnlistedPairsWarning, stacklevel=2)
        splits = manifest_splits(folder) or {}
        rel = [(d, c, d.relative_to(folder / "degraded").with_suffix("").as_posix()) for d, c in report.pairs]
        rel = [(d, c, name) for d, c, name in rel if split == "all" or splits.get(name, "train") == split]
        flagged = flagged_pairs(folder) if skip_flagged else {}
        self.skipped = {name: flagged[name] for _, _, name in rel if name in flagged}
        if self.skipped:  # a misaligned or mismatched target teaches blur: said, never trained on
            warnings.warn(f"pair folder {folder}: skipping {len(self.skipped)} pairs flagged by check-pairs: "
                          + "; ".join(f"{n} ({r})" for n, r in list(self.skipped.items())[:10])
                          + (" ..." if len(self.skipped) > 10 else ""), FlaggedPairsWarning, stacklevel=2)
        rel = [(d, c, name) for d, c, name in rel if name not in self.skipped]
        self.references, self.without_reference = None, {}
        if reference and rel:
            self.references = _reference_index(folder, report, splits, [name for _, _, name in rel], flagged)
            self.without_reference = self.references.without
            if self.without_reference:  # e.g. the only image of its identity in the folder: nothing to show it
                warnings.warn(f"pair folder {folder}: leaving out {len(self.without_reference)} pairs without a "
                              f"reference photo: " + "; ".join(f"{n} ({r})" for n, r in
                                                                list(self.without_reference.items())[:10])
                              + (" ..." if len(self.without_reference) > 10 else ""), NoReferenceWarning,
                              stacklevel=2)
                rel = [(d, c, name) for d, c, name in rel if name not in self.without_reference]
        if not rel:
            raise PairError(f"pair folder {folder} has no pairs in split {split!r}"
                            + (f" that check-pairs did not flag (flagged: {_names(self.skipped)})"
                               if self.skipped else "")
                            + (f" with a reference photo (without one: {_names(self.without_reference)})"
                               if self.without_reference else ""))
        self.pairs = [(d, c) for d, c, _ in rel]
        self.names = [name for _, _, name in rel]
        self.size = size
        self.folder = folder
        states = [valid_mask_state(folder, name, c) for _, c, name in rel]
        self.has_valid = [state == "current" for state in states]
        stale = [name for name, state in zip(self.names, states) if state == "stale"]
        if stale:  # the photo was replaced after aligning: its mask marks another image's pixels
            warnings.warn(f"pair folder {folder}: ignoring validity masks made for other photos than the ones in "
                          f"clean/ now (run `check-pairs --align` again): {_names(f'valid/{n}.png' for n in stale)}",
                          StaleValidMaskWarning, stacklevel=2)

    def mask_path(self, index: int) -> Path:
        return (self.folder / "mask" / self.pairs[index][0].relative_to(self.folder / "degraded")).with_suffix(".png")

    def require_masks(self) -> None:
        """The region-weighted loss needs every pair's mask; say which is missing before training starts."""
        missing = [str(self.mask_path(i)) for i in range(len(self)) if not self.mask_path(i).is_file()]
        if missing:
            raise PairError(f"--region-weight needs the damage masks `training degrade` writes; missing: "
                            f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        d, c = self.pairs[index]
        return read_image(d).rgb, read_image(c).rgb

    def load_mask(self, index: int, shape: tuple) -> np.ndarray:
        """(H, W, 2) float32: the damage mask (zeros without one: real paired renders weigh every pixel the same)
        and the validity (ones without a current valid/NAME.png)."""
        out = np.zeros(shape[:2] + (2,), np.float32)
        out[..., 1] = 1
        for channel, path in ((0, self.mask_path(index)),
                              (1, valid_path(self.folder, self.names[index]) if self.has_valid[index] else None)):
            mask = _grey(path) if path is not None and path.is_file() else None
            if mask is None:
                continue
            if mask.shape != tuple(shape[:2]):
                raise PairError(f"{path} is {mask.shape[1]}x{mask.shape[0]}, its pair {shape[1]}x{shape[0]}")
            out[..., channel] = mask.astype(np.float32) / 255
        return out

    def reference_path(self, index: int, rng: np.random.Generator | None = None) -> Path:
        """Pair `index`'s reference photo: drawn with `rng`, the fixed evaluation choice without."""
        return self.references.draw(self.names[index], rng)

    def sample(self, index: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, ...]:
        """(3, size, size) degraded and clean, (2, size, size) damage mask and validity; random crop + flip with
        `rng`, centre without. With references, a fourth: the (3, size, size) reference, its own crop, the pair's
        flip, drawn from a generator seeded by `rng` after the pair's draws (so a pair crops the same either way)."""
        degraded, clean = self.load(index)
        mask = self.load_mask(index, clean.shape)
        h, w = clean.shape[:2]
        if min(h, w) < self.size:
            raise PairError(f"{self.pairs[index][1]} is {w}x{h}, smaller than the training size {self.size}")
        if rng is None:
            y, x, flip = (h - self.size) // 2, (w - self.size) // 2, False
        else:
            y, x = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
            flip = bool(rng.integers(0, 2))
        out = []
        for img in (degraded, clean, mask):
            crop = img[y:y + self.size, x:x + self.size]
            crop = crop[:, ::-1] if flip else crop
            out.append(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1))
        if self.references is None:
            return out[0] * 2 - 1, out[1] * 2 - 1, out[2]
        ref_rng = None if rng is None else np.random.default_rng(int(rng.integers(0, 2 ** 63)))
        path = self.reference_path(index, ref_rng)
        try:
            image = fit_reference(read_image(path).rgb, clean.shape[:2])
        except ImageError as e:
            raise PairError(f"the reference photo of pair {self.names[index]}: {e}") from None
        ref = reference_crop(image, self.size, ref_rng, flip)
        ref = torch.from_numpy(np.ascontiguousarray(ref)).permute(2, 0, 1)
        return out[0] * 2 - 1, out[1] * 2 - 1, out[2], ref * 2 - 1

    def batch(self, seed: int, index: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Micro-batch number `index` of the run (the trainer counts them across steps, accumulation and
        processes): epochs are seeded permutations of the pairs, crops and flips seeded per sample."""
        n = len(self)
        samples = []
        for k in range(index * batch_size, (index + 1) * batch_size):
            epoch, pos = divmod(k, n)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            samples.append(self.sample(int(order[pos]), np.random.default_rng([seed, k, 7])))
        return tuple(torch.stack(t) for t in zip(*samples))


def _reference_index(folder: Path, report, splits: dict, names: list[str], flagged: dict) -> ReferenceIndex:
    """Candidates come from every pair the folder lists (all splits), the dataset's own split or not."""
    clean = {c.relative_to(folder / "clean").with_suffix("").as_posix(): c for _, c in report.pairs}
    records = read_manifest(folder)
    by_name = None if records is None else {Path(r["file"]).with_suffix("").as_posix(): r for r in records
                                            if "file" in r}
    return ReferenceIndex(folder, names, clean, by_name, splits, set(flagged))


def _grey(path: Path) -> np.ndarray | None:
    """8-bit grey, or None when it cannot be decoded (imdecode: non-ASCII paths work on Windows too)."""
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch number i of a run, as a map-style dataset: a DataLoader's workers build them in order."""

    def __init__(self, data: PairDataset, seed: int, batch_size: int):
        self.data, self.seed, self.batch_size = data, seed, batch_size

    def __len__(self) -> int:
        return 2 ** 62  # indexed by the run's micro-batch counter, never iterated as a whole

    def __getitem__(self, index: int):
        return self.data.batch(self.seed, index, self.batch_size)


def batches(data: PairDataset, seed: int, batch_size: int, indices, workers: int, pin: bool = False):
    """Iterate the micro-batches `indices` (a list the trainer computes from step, accumulation and process).
    The loader gets its own generator: DataLoader otherwise draws its worker seed from torch's global RNG, which
    would shift the skip-dropout draws and break exact resume."""
    workers = workers if indices else 0
    return torch.utils.data.DataLoader(MicroBatches(data, seed, batch_size), batch_size=None, sampler=indices,
                                       num_workers=workers, pin_memory=pin, prefetch_factor=2 if workers else None,
                                       generator=torch.Generator().manual_seed(seed),
                                       worker_init_fn=_ignore_ctrl_c if workers else None)


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group; the trainer finishes its step and saves, so the workers it is still
    reading from must not die first."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
