"""The models the preferences' Models box lists: what can be fetched from the hub, and the user's own checkpoint.
No bpy, no torch: a checkpoint's licence and base come from its safetensors header, read as JSON."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .engine_link.licenses import NVIDIA_DIFIX, License, license_by_id

STABILITY = "Stability AI Community License (https://huggingface.co/stabilityai/sd-turbo)"
CHECKPOINT_META = "splat_restore"  # engine/weights/checkpoint.py's META_KEY


@dataclass(frozen=True)
class HubModel:
    id: str
    label: str
    use: str  # what it is for, one line
    license: License | None  # one that must be accepted before its download (and by the engine before use)
    terms: str  # the licence line shown

    @property
    def needs_acceptance(self) -> bool:
        return self.license is not None


HUB_MODELS = (
    HubModel("nvidia/difix", "NVIDIA Difix", "a restorer on day one (Model: NVIDIA Difix)", NVIDIA_DIFIX,
             f"{NVIDIA_DIFIX.name}: non-commercial use only; its SD-Turbo base: {STABILITY}"),
    HubModel("nvidia/difix_ref", "NVIDIA Difix-ref", "Difix guided by a reference photo", NVIDIA_DIFIX,
             f"{NVIDIA_DIFIX.name}: non-commercial use only; its SD-Turbo base: {STABILITY}"),
    HubModel("stabilityai/sd-turbo", "SD-Turbo", "the base model your own checkpoints are trained on", None,
             STABILITY),
)
BY_ID = {m.id: m for m in HUB_MODELS}


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    exists: bool
    bytes: int
    license: str  # its licence described, "" for none
    base: str  # the base model it needs ("" when unreadable)
    problem: str  # why its header could not be read, "" when it could


def read_checkpoint(path: str | Path) -> Checkpoint:
    """What the Models box says about the user's checkpoint, from the file's header alone."""
    path = Path(path)
    if not path.is_file():
        return Checkpoint(path, False, 0, "", "", "")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError(f"a header of {length} bytes")
            meta = json.loads(f.read(length)).get("__metadata__") or {}
        info = json.loads(meta[CHECKPOINT_META])
    except (OSError, ValueError, KeyError, struct.error) as e:
        return Checkpoint(path, True, size, "", "", f"not a Splat Restore checkpoint ({type(e).__name__}: {e})")
    lic = license_by_id(info.get("license", ""))
    return Checkpoint(path, True, size, lic.describe() if lic else "", str(info.get("base", "")), "")
