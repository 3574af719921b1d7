"""Write-then-rename, so an output is either complete or absent, never half-written."""
from __future__ import annotations

import contextlib
import glob
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success it replaces `target`, on any error it is removed."""
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.partial{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
        _remove_leftovers(target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_leftovers(target: Path) -> None:
    """Temporaries of `target` left by a writer that was killed mid-write (an engine killed during a render): the
    complete file is in place now, so they are litter."""
    pattern = f".{glob.escape(target.stem)}.{'?' * 8}.partial{glob.escape(target.suffix)}"
    for stale in target.parent.glob(pattern):
        with contextlib.suppress(OSError):
            stale.unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
