"""Reference photos for training with `--reference`: which clean photo of the same person goes beside each pair.

A restorer that takes a reference (RestorerConfig.views = 2) learns to carry detail from a photo of the person into the
frame, so every training pair needs one, and never its own clean image (that is the target: the restorer would learn
to copy it and nothing else). Per pair, the first of these that exists:

1. `reference/NAME.<ext>` in the pairs folder (NAME as in clean/): that photo, always.
2. an `identity` in the pair's manifest record (`training degrade --identities FILE`, CelebA's `image_name
   identity_id` list): another clean image of the same identity, drawn afresh at each step.
3. a `camera` in the record (Blender's Make Training Pairs: one capture, one person): another camera's photo, drawn
   afresh at each step. Any other camera, not the nearest: the manifest records no camera poses (and names need not
   follow the rig), and at restore time one reference photo serves every frame of an orbit, far views included, so
   training on near and far views alike matches how the weights are used.

Drawn references come from the training split only (a held-out photo must not reach training, not even as an
input); a held-out pair draws from training photos too (a user's reference is a photo they have), or from other
held-out ones when its identity has no training photo. Pairs flagged by check-pairs are never drawn. Evaluation
(no random generator) takes a fixed choice: the first candidate by name, as a user picks one photo for a whole run.
A pair with nothing to show (its identity has no other usable photo, or it has no reference file, identity or camera
while others in the folder do) is left out, named (`without`); a folder that gives no pair a reference is an error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.images import is_image_path

REFERENCE_FOLDER = "reference"


class ReferenceSourceError(ValueError):
    pass


def read_identities(path: str | Path) -> dict[str, str]:
    """{image name: identity} from a list of `image_name identity_id` lines (CelebA's identity_CelebA.txt); blank
    lines and `#` comments are skipped, anything else malformed is an error naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReferenceSourceError(f"identity list {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReferenceSourceError(f"identity list {path} cannot be read as text: {e}") from None
    identities: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)  # the last field is the identity; the name may hold spaces
        if len(parts) != 2:
            raise ReferenceSourceError(f"identity list {path} line {number} is {line!r}, not `image_name "
                                       f"identity_id`")
        name, identity = parts
        if identities.get(name, identity) != identity:
            raise ReferenceSourceError(f"identity list {path} line {number} gives {name} identity {identity}, an "
                                       f"earlier line {identities[name]}")
        identities[name] = identity
    if not identities:
        raise ReferenceSourceError(f"identity list {path} lists no images (expected `image_name identity_id` lines)")
    return identities


def identity_of(identities: dict[str, str], name: str) -> str | None:
    """The identity of a source image named `name` (its path under the clean folder): by that path, else by its file
    name (CelebA's list names files, the clean folder may nest them)."""
    return identities.get(name, identities.get(Path(name).name))


def reference_files(folder: Path) -> dict[str, Path]:
    """{pair name: its reference photo} from `folder/reference/`; two files for one name are refused, naming both."""
    root = folder / REFERENCE_FOLDER
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for p in sorted(root.rglob("*")):
        if not (p.is_file() and is_image_path(p) and not p.name.startswith(".")):
            continue
        name = p.relative_to(root).with_suffix("").as_posix()
        if name in found:
            raise ReferenceSourceError(f"pair {name} has two reference photos, {found[name]} and {p}: keep one")
        found[name] = p
    return found


def _group(record: dict) -> str | None:
    if record.get("identity") not in (None, ""):
        return f"identity {record['identity']}"
    if record.get("camera"):
        return "capture"  # Make Training Pairs: every camera of the folder photographed the same person
    return None


class ReferenceIndex:
    """Where each of a dataset's pairs takes its reference from.

    `names`: the dataset's pairs; `clean`: {name: clean path} of every pair the folder lists (candidates come from
    all splits); `records`: the manifest's records by name (None: no manifest); `splits`: {name: split};
    `flagged`: pairs check-pairs flagged (never drawn)."""

    def __init__(self, folder: Path, names: list[str], clean: dict[str, Path], records: dict[str, dict] | None,
                 splits: dict[str, str], flagged: set):
        self.folder = folder
        files = reference_files(folder)
        groups = {n: _group(r) for n, r in (records or {}).items()}
        members: dict[str, list[str]] = {}
        for n in sorted(clean):
            if groups.get(n) is not None and n not in flagged:
                members.setdefault(groups[n], []).append(n)
        self.fixed: dict[str, Path] = {}  # reference/NAME
        self.candidates: dict[str, list[Path]] = {}  # drawn per step; [0] is the evaluation choice
        self.without: dict[str, str] = {}  # pairs with no photo to be shown: left out, named
        if not files and all(g is None for g in groups.values()):
            raise ReferenceSourceError(
                f"--reference: pair folder {folder} gives its pairs no reference photo: put one per pair in "
                f"{folder / REFERENCE_FOLDER}/NAME.png (NAME as in clean/), or give its manifest identities "
                f"(`training degrade --identities FILE`, `image_name identity_id` lines), or make the pairs with "
                f"Make Training Pairs (each camera's photo is the others' reference)"
                + ("" if records is not None else "; it has no manifest.jsonl"))
        for name in names:
            if name in files:
                self.fixed[name] = files[name]
                continue
            group = groups.get(name)
            if group is None:
                self.without[name] = (f"no {REFERENCE_FOLDER}/{name}.<ext> and no identity or camera in the "
                                      f"manifest")
                continue
            others = [n for n in members.get(group, []) if n != name]  # never the pair's own clean image
            pool = [n for n in others if splits.get(n, "train") == "train"]
            if splits.get(name, "train") != "train" and not pool:
                pool = others  # a held-out pair may be shown another held-out photo: it is only ever an input
            if pool:
                self.candidates[name] = [clean[n] for n in pool]
            else:
                self.without[name] = (f"no other usable photo of its {group}" if group.startswith("identity")
                                      else "no other camera's usable photo") + " to be its reference"

    def draw(self, name: str, rng: np.random.Generator | None) -> Path:
        """The reference photo for pair `name`: drawn with `rng`, the fixed evaluation choice without."""
        if name in self.fixed:
            return self.fixed[name]
        options = self.candidates[name]
        return options[0] if rng is None else options[int(rng.integers(0, len(options)))]

    def describe(self, name: str) -> list[str]:
        """What pair `name` may be shown, for the run's pairs fingerprint (relative paths)."""
        paths = [self.fixed[name]] if name in self.fixed else self.candidates.get(name, [])
        return [p.relative_to(self.folder).as_posix() for p in paths]


def fit_reference(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Scale a reference photo so its short side equals the pair's (`shape`: H, W): the two views then show the face
    at about the same scale (capture cameras of one rig, or degrade's pairs, are the same size: unchanged)."""
    import cv2

    h, w = image.shape[:2]
    short = min(shape)
    if min(h, w) == short:
        return image
    scale = short / min(h, w)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def reference_crop(image: np.ndarray, size: int, rng: np.random.Generator | None, flip: bool) -> np.ndarray:
    """Its own crop (a reference is another view, framed its own way: the pair's crop window means nothing in it),
    random with `rng`, centred without; mirrored with the pair (`flip`), so the person's left stays on the same
    side in both views: a mole on the left cheek is on the left in frame and reference alike."""
    h, w = image.shape[:2]
    if rng is None:
        y, x = (h - size) // 2, (w - size) // 2
    else:
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    crop = image[y:y + size, x:x + size]
    return crop[:, ::-1] if flip else crop
