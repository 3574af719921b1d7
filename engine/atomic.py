"""Write-then-rename, so an output is either complete or absent, never half-written."""
from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

from blender_addon.engine_link.scan import remove_temporaries, temporary_for


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success it replaces `target`, on any error it is removed."""
    target = Path(target)
    tmp = temporary_for(target)
    try:
        yield tmp
        os.replace(tmp, target)
        remove_temporaries(target)  # a killed earlier writer's, now that the complete file is in place
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def numbered(target: Path, k: int) -> Path:
    return target if k == 1 else target.with_name(f"{target.stem}-{k}{target.suffix}")


def write_bytes_new(target: str | os.PathLike, data: bytes) -> Path:
    """Write `data` complete under `target`'s name, or NAME-2, NAME-3, ... when taken: never replaces a file, even
    one another process writes meanwhile (a shared folder). Returns the path written."""
    target = Path(target)
    tmp = temporary_for(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for k in itertools.count(1):
            candidate = numbered(target, k)
            try:
                os.link(tmp, candidate)  # atomic, and fails where the name exists
                return candidate
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system: check, then rename (a narrow race remains)
                if candidate.exists():
                    continue
                os.replace(tmp, candidate)
                return candidate
    finally:
        if tmp.exists():
            tmp.unlink()
