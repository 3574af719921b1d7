"""The scene's Reference Photo: whether the chosen weights use it, what the panel says, what a request carries.
No bpy: tested with plain pytest.

Whether a request carries the photo is decided by the engine that will restore it: its ready line says whether its
weights take a reference (`takes_reference`), so a photo is never sent to weights that would refuse it, and weights
that need one and get none say so in the engine's own words. The panel cannot wait for an engine to load, so its note
comes from the running engine when it runs the chosen weights, else from a look at the weights on disk
(engine_link.weights.takes_reference: Difix-ref by hub id or layout, or a checkpoint's recipe).
"""
from __future__ import annotations

import functools
import os

from .engine_link.weights import takes_reference


def request_options(photo: str, client) -> dict:
    """The restore request's "reference" for `client`'s engine (an EngineClient, started): the photo when its
    weights take one (its ready line says), nothing otherwise."""
    if not photo:
        return {}
    return {"reference": photo} if (client.ready or {}).get("takes_reference") else {}


@functools.lru_cache(maxsize=16)
def _takes_reference_on_disk(weights: str, stamp) -> bool:
    return takes_reference(weights)


def weights_take_reference(weights: str, client=None) -> bool:
    """The running engine's word when `client` (an EngineClient, or None) has loaded these weights; otherwise a look
    at them on disk, remembered until the file changes (the panel asks at every redraw)."""
    if client is not None and client.alive and client.ready and client.settings.weights == weights:
        return bool(client.ready.get("takes_reference"))
    try:
        st = os.stat(weights)
        stamp = (st.st_mtime_ns, st.st_size)
    except (OSError, ValueError):
        stamp = None
    return _takes_reference_on_disk(weights, stamp)


def panel_note(photo: str, takes: bool) -> tuple[str, str] | None:
    """(text, icon) for the panel under the Reference Photo field, or None when all is as it should be."""
    if takes and not photo.strip():
        return "These weights need a Reference Photo of the person: restores fail without one", "ERROR"
    if photo.strip() and not takes:
        return ("The chosen weights cannot use a Reference Photo; it is not sent (nvidia/difix_ref, or weights "
                "trained with --reference, can)"), "INFO"
    if takes:
        return "Restores use this photo beside every frame", "CHECKMARK"
    return None
