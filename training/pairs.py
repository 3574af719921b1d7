"""A pairs folder: `<dir>/degraded/NAME` and `<dir>/clean/NAME`, same names and sizes, and with `mask/NAME` and
`manifest.jsonl` when `training degrade` wrote it. With a manifest, the pairs are the ones it lists: files it does not
list (left by an earlier run, or copied in) are named and never trained on."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.images import is_image_path

MANIFEST = "manifest.jsonl"
PAIR_FOLDERS = ("clean", "degraded", "mask")


@dataclass
class PairReport:
    pairs: list = field(default_factory=list)  # (degraded, clean) paths
    missing_clean: list = field(default_factory=list)
    missing_degraded: list = field(default_factory=list)
    size_mismatch: list = field(default_factory=list)  # (name, degraded size, clean size)
    unreadable: list = field(default_factory=list)  # (path, reason)
    absent: list = field(default_factory=list)  # listed in the manifest, in neither degraded/ nor clean/
    unlisted: list = field(default_factory=list)  # image files (relative paths) the manifest does not list: ignored

    @property
    def ok(self) -> bool:
        return bool(self.pairs) and not (self.missing_clean or self.missing_degraded or self.size_mismatch
                                         or self.unreadable or self.absent)

    def describe(self) -> str:
        lines = [f"{len(self.pairs)} complete pairs"]
        for title, items in (("degraded without a clean partner", self.missing_clean),
                             ("clean without a degraded partner", self.missing_degraded),
                             (f"listed in {MANIFEST} but in neither degraded/ nor clean/", self.absent),
                             (f"files not listed in {MANIFEST}, ignored", self.unlisted)):
            if items:
                lines.append(f"{len(items)} {title}: {', '.join(items[:10])}" + (" ..." if len(items) > 10 else ""))
        for name, a, b in self.size_mismatch[:10]:
            lines.append(f"size mismatch {name}: degraded {a[0]}x{a[1]}, clean {b[0]}x{b[1]}")
        for path, reason in self.unreadable[:10]:
            lines.append(f"unreadable {path}: {reason}")
        return "\n".join(lines)


def file_fingerprint(path: Path) -> dict:
    """Size, modification time and content hash: `matches_fingerprint` trusts size + mtime when both are unchanged
    and falls back to the hash when the time differs (a copied or moved folder keeps its checks)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def matches_fingerprint(path: Path, fingerprint: dict) -> bool:
    try:
        st = path.stat()
        if st.st_size != fingerprint.get("size"):
            return False
        return st.st_mtime_ns == fingerprint.get("mtime_ns") or _sha256(path) == fingerprint.get("sha256")
    except OSError:
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _images(folder: Path) -> dict:
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and is_image_path(p) and not p.name.startswith(".")}


def read_manifest(folder: Path) -> list[dict] | None:
    """The records `training degrade` wrote, or None for a folder without a manifest (real paired renders)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record = e.msg
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} is not a manifest record ({record}); write the pairs again "
                             f"with `training degrade --overwrite`")
        records.append(record)
    return records


def manifest_splits(folder: Path) -> dict | None:
    """{pair name without extension: split} of the pairs the manifest lists, or None without a manifest."""
    records = read_manifest(folder)
    if records is None:
        return None
    return {Path(r["file"]).with_suffix("").as_posix(): r.get("split", "train") for r in records if "file" in r}


def validate_pairs(folder: str | Path) -> PairReport:
    """Match degraded/ and clean/ by name (extension ignored), keep the pairs the manifest lists (all of them without
    one), and check that partners have the same size."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"pair folder {folder} does not exist (or is not a folder)")
    for sub in ("degraded", "clean"):
        if not (folder / sub).is_dir():
            raise ValueError(f"pair folder {folder} has no {sub}/ subfolder (expected {folder}/degraded/NAME and "
                             f"{folder}/clean/NAME)")
    found = {sub: _images(folder / sub) for sub in PAIR_FOLDERS}
    listed = manifest_splits(folder)
    report = PairReport()
    if listed is not None:
        report.unlisted = sorted(p.relative_to(folder).as_posix() for images in found.values()
                                 for name, p in images.items() if name not in listed)
        report.absent = sorted(set(listed) - set(found["degraded"]) - set(found["clean"]))
        found = {sub: {n: p for n, p in images.items() if n in listed} for sub, images in found.items()}
    degraded, clean = found["degraded"], found["clean"]
    report.missing_clean = sorted(set(degraded) - set(clean))
    report.missing_degraded = sorted(set(clean) - set(degraded))
    for name in sorted(set(degraded) & set(clean)):
        sizes = []
        for path in (degraded[name], clean[name]):
            try:
                with Image.open(path) as im:
                    sizes.append(im.size)
            except OSError as e:
                report.unreadable.append((str(path), str(e)))
        if len(sizes) < 2:
            continue
        if sizes[0] != sizes[1]:
            report.size_mismatch.append((name, sizes[0], sizes[1]))
        else:
            report.pairs.append((degraded[name], clean[name]))
    return report
