"""Licences of third-party weights the engine can run, and the acceptance gate in front of them. Standard library
only: the engine enforces the gate, the add-on shows the same text beside its acceptance box.

The gate is checked before anything is loaded or written: a refusal costs nothing and leaves no file behind.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

ACCEPT_FLAG = "--accept-license"
ACCEPT_ENV = "SPLAT_RESTORE_ACCEPT_LICENSE"  # for render farms, where no one can tick a box


@dataclass(frozen=True)
class License:
    id: str
    name: str
    url: str
    terms: str  # one line: what the licence allows

    def describe(self) -> str:
        return f"{self.name}: {self.terms} ({self.url})"


NVIDIA_DIFIX = License(
    id="nvidia-difix",
    name="NVIDIA License",
    url="https://github.com/nv-tlabs/Difix3D/blob/main/LICENSE.txt",
    terms="non-commercial use only (research or evaluation); the SD-Turbo base inside the weights also falls "
          "under the Stability AI Community License (https://huggingface.co/stabilityai/sd-turbo)")
LICENSES = {lic.id: lic for lic in (NVIDIA_DIFIX,)}


class LicenseNotAccepted(ValueError):
    pass


def license_by_id(license_id: str) -> License | None:
    return LICENSES.get(license_id) if license_id else None


def accepted_by_environment() -> bool:
    return os.environ.get(ACCEPT_ENV, "").strip().lower() in ("1", "true", "yes")


def require_acceptance(license_id: str, weights: str, accepted: bool) -> None:
    """Raise LicenseNotAccepted unless weights under a licence were accepted (flag, add-on box or environment)."""
    lic = license_by_id(license_id)
    if lic is None or accepted or accepted_by_environment():
        return
    raise LicenseNotAccepted(
        f"weights {weights} are under the {lic.name}: {lic.terms}. Read it at {lic.url}; to accept it, pass "
        f"{ACCEPT_FLAG} (or set {ACCEPT_ENV}=1, or tick the acceptance box in the Blender add-on's preferences)")
