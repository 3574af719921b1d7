"""Paired renders from a real avatar pipeline: `<dir>/degraded/NAME` and `<dir>/clean/NAME`, same names and sizes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.images import is_image_path


@dataclass
class PairReport:
    pairs: list = field(default_factory=list)  # (degraded, clean) paths
    missing_clean: list = field(default_factory=list)
    missing_degraded: list = field(default_factory=list)
    size_mismatch: list = field(default_factory=list)  # (name, degraded size, clean size)
    unreadable: list = field(default_factory=list)  # (path, reason)

    @property
    def ok(self) -> bool:
        return bool(self.pairs) and not (self.missing_clean or self.missing_degraded or self.size_mismatch
                                         or self.unreadable)

    def describe(self) -> str:
        lines = [f"{len(self.pairs)} complete pairs"]
        for title, items in (("degraded without a clean partner", self.missing_clean),
                             ("clean without a degraded partner", self.missing_degraded)):
            if items:
                lines.append(f"{len(items)} {title}: {', '.join(items[:10])}" + (" ..." if len(items) > 10 else ""))
        for name, a, b in self.size_mismatch[:10]:
            lines.append(f"size mismatch {name}: degraded {a[0]}x{a[1]}, clean {b[0]}x{b[1]}")
        for path, reason in self.unreadable[:10]:
            lines.append(f"unreadable {path}: {reason}")
        return "\n".join(lines)


def _images(folder: Path) -> dict:
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and is_image_path(p) and not p.name.startswith(".")}


def validate_pairs(folder: str | Path) -> PairReport:
    """Match degraded/ and clean/ by name (extension ignored) and check that partners have the same size."""
    from PIL import Image

    folder = Path(folder)
    for sub in ("degraded", "clean"):
        if not (folder / sub).is_dir():
            raise ValueError(f"pair folder {folder} has no {sub}/ subfolder (expected {folder}/degraded/NAME and "
                             f"{folder}/clean/NAME)")
    degraded, clean = _images(folder / "degraded"), _images(folder / "clean")
    report = PairReport(missing_clean=sorted(set(degraded) - set(clean)),
                        missing_degraded=sorted(set(clean) - set(degraded)))
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
